"""Resumable replies in a real headless Chromium: EventSource, and the chat page offline."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Request, Route, expect

from tests.e2e.test_chat_page import (
    REPLY_TIMEOUT_MS,
    UI_TIMEOUT_MS,
    ChatPage,
    open_chat,
)
from tests.e2e.test_chat_page import browser as browser  # the fixture
from tests.support.gateway import MakeGateway


@pytest.mark.browser
async def test_event_source_reads_a_background_reply_to_its_end(
    browser: Any, gateway_url: str
) -> None:
    body = {
        "model": "fake",
        "messages": [{"role": "user", "content": "An EventSource reads me"}],
        "seed": 8,
        "max_tokens": 40,
    }
    async with aiohttp.ClientSession() as session:
        url = f"{gateway_url}/v1/chat/completions"
        async with session.post(url, json={**body, "background": True}) as resp:
            started = await resp.json()
            token = resp.headers["X-Resume-Token"]
        async with session.post(url, json=body) as resp:
            expected = (await resp.json())["choices"][0]["message"]["content"]
    chat = await open_chat(browser, gateway_url)
    gets: list[str] = []
    chat.page.on(
        "request",
        lambda r: gets.append(r.url) if started["id"] in r.url and r.method == "GET" else None,
    )
    try:
        await chat.page.evaluate(
            """([id, token]) => {
              window.__text = ""; window.__done = false;
              const es = new EventSource(
                '/v1/chat/completions/' + id + '?stream=true&token=' + token);
              window.__es = es;
              es.onmessage = (event) => {
                if (event.data === '[DONE]') { window.__done = true; return; }
                const chunk = JSON.parse(event.data);
                for (const choice of chunk.choices) window.__text += choice.delta.content ?? '';
              };
            }""",
            [started["id"], token],
        )
        await chat.page.wait_for_function("() => window.__done", timeout=REPLY_TIMEOUT_MS)
        # The browser reconnects once after the stream ends; 204 stops it for good.
        await chat.page.wait_for_function(
            "() => window.__es.readyState === 2", timeout=UI_TIMEOUT_MS
        )
        await asyncio.sleep(2.5)
        assert await chat.page.evaluate("() => window.__text") == expected
        assert len(gets) == 2, gets
    finally:
        await chat.page.close()


@pytest.mark.browser
async def test_chat_page_survives_going_offline_mid_answer(
    browser: Any, make_gateway: MakeGateway
) -> None:
    url = await make_gateway()
    context = await browser.new_context(viewport={"width": 1100, "height": 750})
    page = await context.new_page()
    sent: list[dict[str, Any]] = []

    async def seeded(route: Route, request: Request) -> None:
        body = json.loads(request.post_data or "{}")
        body["seed"] = 12
        body["max_tokens"] = 120
        sent.append(body)
        await route.continue_(post_data=json.dumps(body))

    await page.route("**/v1/chat/completions", seeded)
    resumes: list[str] = []
    page.on(
        "request",
        lambda r: resumes.append(r.url) if r.method == "GET" and "stream=true" in r.url else None,
    )
    chat = ChatPage(page)
    try:
        await page.goto(url + "/")
        await chat.choose_model("fake")
        await chat.send("Keep talking through a network drop")
        await expect(chat.reply_body()).to_have_text(
            re.compile(r"(\S+\s+){8}"), timeout=REPLY_TIMEOUT_MS
        )
        await context.set_offline(True)
        await asyncio.sleep(3)
        await context.set_offline(False)
        await chat.wait_reply("done")
        await chat.send("and then?")
        await chat.wait_reply("done", 1)
    finally:
        await context.close()
    first = sent[0]
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/v1/chat/completions",
            json={
                "model": first["model"],
                "messages": first["messages"],
                "seed": 12,
                "max_tokens": 120,
            },
        ) as resp,
    ):
        expected = (await resp.json())["choices"][0]["message"]["content"]
    assert resumes, "the drop was never noticed: nothing resumed"
    assert sent[1]["messages"][1] == {"role": "assistant", "content": expected}
    chat.assert_no_console_errors(lambda text: "ERR_INTERNET_DISCONNECTED" in text)
