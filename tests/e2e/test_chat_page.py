"""The chat page, in a real headless Chromium, against the real gateway in-process.

The gateway runs in the test's event loop (the ``gateway_url`` / ``make_gateway``
fixtures), so Playwright's async API drives the browser from the same loop and
``structlog.testing.capture_logs()`` sees what the server logs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Callable, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Locator,
    Page,
    Request,
    Route,
    expect,
)

from tests.support.chromium import chromium

# Generous: the machine is small and noisy, and `fake` streams for several seconds.
REPLY_TIMEOUT_MS = 90_000
UI_TIMEOUT_MS = 15_000
XSS = '<img src=x onerror="window.__xss=1">'
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class ChatPage:
    """The page under test, with the console errors it produced."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console_errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.console_errors.append(f"pageerror: {error}"))

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    @property
    def prompt(self) -> Locator:
        return self.page.get_by_test_id("prompt")

    @property
    def stop(self) -> Locator:
        return self.page.get_by_test_id("stop")

    @property
    def user_messages(self) -> Locator:
        return self.page.get_by_test_id("user-message")

    @property
    def replies(self) -> Locator:
        return self.page.get_by_test_id("assistant-message")

    def reply_body(self, index: int = -1) -> Locator:
        return self.replies.nth(index).locator(".body")

    async def choose_model(self, model: str) -> None:
        select = self.page.get_by_test_id("model-select")
        await expect(select.locator(f'option[value="{model}"]')).to_be_attached(
            timeout=UI_TIMEOUT_MS
        )
        await select.select_option(model)

    async def send(self, text: str) -> None:
        await self.prompt.fill(text)
        await self.page.get_by_test_id("send").click()

    async def wait_reply(self, state: str, index: int = -1) -> None:
        """Wait until a reply ended as ``done``, ``stopped`` or ``error``."""
        await expect(self.replies.nth(index)).to_have_attribute(
            "data-state", state, timeout=REPLY_TIMEOUT_MS
        )

    def assert_no_console_errors(self, allow: Callable[[str], bool] = lambda _: False) -> None:
        unexpected = [text for text in self.console_errors if not allow(text)]
        assert unexpected == []


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def open_chat(
    browser: Browser, url: str, *, width: int = 1100, height: int = 750, dark: bool = False
) -> ChatPage:
    page = await browser.new_page(
        viewport={"width": width, "height": height},
        color_scheme="dark" if dark else "light",
    )
    chat = ChatPage(page)
    await page.goto(url + "/")
    return chat


@pytest.fixture
async def chat(browser: Browser, gateway_url: str) -> AsyncIterator[ChatPage]:
    opened = await open_chat(browser, gateway_url)
    yield opened
    await opened.page.close()


async def add_fake_options(page: Page, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Route the page's chat requests to the real server with ``fake`` knobs added.

    The page itself never sends fake-provider knobs; this keeps the real gateway and
    only edits the JSON body on its way out. Returns the bodies as sent.
    """
    sent: list[dict[str, Any]] = []

    async def handle(route: Route, request: Request) -> None:
        body = json.loads(request.post_data or "{}")
        if options:
            body["fake"] = options
        sent.append(body)
        await route.continue_(post_data=json.dumps(body))

    await page.route("**/v1/chat/completions", handle)
    return sent


def visible_text(text: str | None) -> str:
    """Reply text as a reader sees it grow: formatting marks and spacing dropped.

    Blank lines become paragraph breaks and a ``` fence becomes a code block once its
    line is complete, so whitespace and backticks can vanish; every other character
    only ever accumulates.
    """
    return re.sub(r"[\s`]", "", text or "")


# --- serving ------------------------------------------------------------------


async def test_page_and_assets_carry_security_headers(gateway_url: str) -> None:
    expected_types = {
        "/": "text/html",
        "/static/app.js": "text/javascript",
        "/static/sse.js": "text/javascript",
        "/static/style.css": "text/css",
    }
    async with aiohttp.ClientSession() as session:
        for path, content_type in expected_types.items():
            async with session.get(gateway_url + path) as response:
                assert response.status == 200, path
                assert response.content_type == content_type, path
                assert response.headers["Content-Security-Policy"] == CSP
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                assert response.headers["Cache-Control"] == "no-cache"
                etag = response.headers["ETag"]
            async with session.get(gateway_url + path, headers={"If-None-Match": etag}) as response:
                assert response.status == 304, path
        for path in ("/static/missing.js", "/static/..%2Fui.py", "/static/index.html"):
            async with session.get(gateway_url + path) as response:
                assert response.status == 404, path


async def test_page_has_no_inline_script_or_style(gateway_url: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(gateway_url + "/") as response:
        html = await response.text()
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html) is None
    assert "<style" not in html
    assert " style=" not in html
    assert re.search(r"\son\w+=", html) is None


def test_scripts_never_parse_strings_as_html() -> None:
    static = Path(__file__).resolve().parents[2] / "gateway" / "static"
    scripts = sorted(static.glob("*.js"))
    assert scripts
    for script in scripts:
        source = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in source, f"{script.name} uses {sink}"


# --- the browser ----------------------------------------------------------------


@pytest.mark.browser
async def test_model_picker_lists_the_gateway_models(chat: ChatPage) -> None:
    select = chat.page.get_by_test_id("model-select")
    await expect(select.locator('option[value="fake-fast"]')).to_be_attached(timeout=UI_TIMEOUT_MS)
    options = await select.locator("option").evaluate_all(
        "options => options.map(o => [o.value, o.textContent])"
    )
    assert ["fake", "fake"] in options
    assert ["fake-fast", "fake-fast"] in options
    assert await select.input_value() == "fake"
    chat.assert_no_console_errors()


@pytest.mark.browser
async def test_reply_streams_in_growing_steps(chat: ChatPage, tmp_path: Path) -> None:
    await chat.send("Why does streaming matter?")
    reply = chat.replies.first
    await expect(chat.stop).to_be_visible(timeout=UI_TIMEOUT_MS)
    await expect(reply.locator(".caret")).to_have_count(1)

    samples: list[str] = []
    while await reply.get_attribute("data-state") is None:
        samples.append(visible_text(await chat.reply_body().text_content()))
        await asyncio.sleep(0.05)
    await chat.wait_reply("done")
    samples.append(visible_text(await chat.reply_body().text_content()))

    lengths = sorted({len(sample) for sample in samples})
    assert len(lengths) >= 5, lengths
    for earlier, later in itertools.pairwise(samples):
        assert later.startswith(earlier)
    await expect(chat.stop).to_be_hidden()
    await expect(reply.locator(".caret")).to_have_count(0)
    meta = chat.page.get_by_test_id("reply-meta")
    await expect(meta).to_contain_text(re.compile(r"\d+ ms to first token|s to first token"))
    await expect(meta).to_contain_text(re.compile(r"[\d.]+ tokens/s"))
    await chat.page.screenshot(path=tmp_path / "chat.png")
    chat.assert_no_console_errors()


@pytest.mark.browser
async def test_stop_keeps_the_partial_reply_and_cancels_generation(chat: ChatPage) -> None:
    with structlog.testing.capture_logs() as logs:
        await chat.send("Tell me about cancellation.")
        body = chat.reply_body()
        await expect(body).to_have_text(re.compile(r"(\S+\s+){5}"), timeout=REPLY_TIMEOUT_MS)
        await chat.stop.click()

        await chat.wait_reply("stopped")
        await expect(chat.stop).to_be_hidden()
        await expect(chat.page.get_by_test_id("send")).to_be_visible()
        await expect(chat.page.get_by_test_id("reply-meta")).to_contain_text("stopped")
        stopped_at = await body.text_content()
        assert visible_text(stopped_at) != ""
        await asyncio.sleep(1.0)
        assert await body.text_content() == stopped_at

        def finished() -> list[MutableMapping[str, Any]]:
            return [entry for entry in logs if entry["event"] == "stream_finished"]

        for _ in range(300):
            if finished():
                break
            await asyncio.sleep(0.1)
    assert [entry["reason"] for entry in finished()] == ["cancelled"]
    chat.assert_no_console_errors()


@pytest.mark.browser
async def test_user_text_is_text_never_html(chat: ChatPage) -> None:
    await chat.choose_model("fake-fast")
    await chat.send(XSS)
    await chat.wait_reply("done")

    await expect(chat.user_messages.first.locator(".body")).to_have_text(XSS)
    # The fake reply quotes the prompt, so the model's text takes the same path.
    await expect(chat.reply_body()).to_contain_text(XSS)
    assert await chat.page.locator("#messages img").count() == 0
    assert await chat.page.evaluate("() => window.__xss") is None
    chat.assert_no_console_errors()


@pytest.mark.browser
async def test_enter_sends_and_shift_enter_adds_a_newline(chat: ChatPage) -> None:
    await chat.choose_model("fake-fast")
    await chat.prompt.click()
    await chat.page.keyboard.type("line one")
    await chat.page.keyboard.press("Shift+Enter")
    await chat.page.keyboard.type("line two")
    assert await chat.prompt.input_value() == "line one\nline two"
    assert await chat.user_messages.count() == 0

    await chat.page.keyboard.press("Enter")
    await expect(chat.user_messages).to_have_count(1)
    await expect(chat.user_messages.first.locator(".body")).to_have_text("line one\nline two")
    assert await chat.prompt.input_value() == ""
    await chat.wait_reply("done")
    chat.assert_no_console_errors()


@pytest.mark.browser
async def test_whole_history_is_sent_and_new_chat_clears_it(chat: ChatPage) -> None:
    sent = await add_fake_options(chat.page, {})
    await chat.choose_model("fake-fast")
    await chat.send("first question")
    await chat.wait_reply("done", 0)
    await chat.send("second question")
    await chat.wait_reply("done", 1)

    assert [m["role"] for m in sent[1]["messages"]] == ["user", "assistant", "user"]
    assert sent[1]["messages"][0]["content"] == "first question"
    first_reply = sent[1]["messages"][1]["content"]
    paragraphs = await chat.reply_body(0).locator("p").all_text_contents()
    assert paragraphs
    assert all(paragraph in first_reply for paragraph in paragraphs)
    assert sent[1]["messages"][2]["content"] == "second question"
    for body in sent:
        assert body["model"] == "fake-fast"
        assert body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}

    await chat.page.get_by_role("button", name="New chat").click()
    await expect(chat.replies).to_have_count(0)
    await chat.send("fresh start")
    await chat.wait_reply("done")
    assert sent[2]["messages"] == [{"role": "user", "content": "fresh start"}]
    chat.assert_no_console_errors()


@pytest.mark.browser
async def test_new_chat_during_a_reply_abandons_it(chat: ChatPage) -> None:
    sent = await add_fake_options(chat.page, {})
    await chat.send("A reply that will be abandoned.")
    await expect(chat.reply_body()).to_have_text(re.compile(r"\S"), timeout=REPLY_TIMEOUT_MS)
    await chat.page.get_by_role("button", name="New chat").click()

    await expect(chat.replies).to_have_count(0)
    await expect(chat.stop).to_be_hidden()
    await chat.choose_model("fake-fast")
    await chat.send("next")
    await chat.wait_reply("done")
    assert sent[-1]["messages"] == [{"role": "user", "content": "next"}]
    chat.assert_no_console_errors()


@pytest.mark.browser
async def test_error_during_the_stream_is_shown(chat: ChatPage) -> None:
    await add_fake_options(chat.page, {"fail_after": 3})
    await chat.choose_model("fake-fast")
    await chat.send("This reply will break.")

    await chat.wait_reply("error")
    alert = chat.replies.first.get_by_role("alert")
    await expect(alert).to_be_visible()
    await expect(alert).to_have_text(re.compile(r"^Error: \S"))
    assert visible_text(await chat.reply_body().text_content()) != ""
    await expect(chat.stop).to_be_hidden()
    chat.assert_no_console_errors()


@pytest.mark.browser
async def test_http_error_shows_the_gateway_message(chat: ChatPage) -> None:
    await add_fake_options(chat.page, {"fail_after": 0})
    await chat.choose_model("fake-fast")
    async with chat.page.expect_response("**/v1/chat/completions") as answered:
        await chat.send("This one fails before the first token.")
    response = await answered.value
    assert response.status >= 400
    message = (await response.json())["error"]["message"]

    await chat.wait_reply("error")
    await expect(chat.replies.first.get_by_role("alert")).to_have_text(f"Error: {message}")
    chat.assert_no_console_errors(
        allow=lambda text: text.startswith(
            f"Failed to load resource: the server responded with a status of {response.status}"
        )
    )


@pytest.mark.browser
async def test_stream_without_done_is_an_error_not_a_reply(chat: ChatPage) -> None:
    # A cut connection cannot be ordered from the gateway, so this one response is
    # served by the browser's router: valid chunks, then the end, with no [DONE].
    def event(content: str) -> str:
        chunk = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": content}}]}
        return "data: " + json.dumps(chunk)

    body = f": ping\r\n\r\n{event('Half a')}\r\n\r\n{event(' reply')}\n\n"

    async def cut(route: Route) -> None:
        await route.fulfill(status=200, content_type="text/event-stream", body=body)

    await chat.page.route("**/v1/chat/completions", cut)
    await chat.send("hello")
    await chat.wait_reply("error")
    await expect(chat.reply_body()).to_have_text("Half a reply")
    await expect(chat.replies.first.get_by_role("alert")).to_contain_text("ended before")
    chat.assert_no_console_errors()


@pytest.mark.browser
async def test_sse_parser_follows_the_spec(chat: ChatPage) -> None:
    """The page's own SSE module, in the browser, fed every way of splitting a stream."""
    results = await chat.page.evaluate(
        """async () => {
        const { SSEParser, readSSE } = await import("/static/sse.js");
        const stream = "\\uFEFF: comment\\r\\ndata: one\\r\\n\\r\\n"
          + "event: note\\rdata:two\\rdata:  lines\\r\\r"
          + "id: 7\\ndata\\n\\n"
          + "retry: 1500\\ndata: é ☃ 😀\\n\\n"
          + "data: [DONE]\\n\\ndata: never dispatched";
        const bytes = new TextEncoder().encode(stream);
        const collect = async (chunks) => {
          const body = new ReadableStream({
            start(controller) {
              for (const c of chunks) controller.enqueue(c);
              controller.close();
            },
          });
          const events = [];
          for await (const e of readSSE(body)) events.push([e.type, e.data, e.lastEventId]);
          return JSON.stringify(events);
        };
        const outcomes = new Set();
        outcomes.add(await collect([bytes]));
        for (let i = 1; i < bytes.length; i++) {
          outcomes.add(await collect([bytes.slice(0, i), bytes.slice(i)]));
        }
        outcomes.add(await collect([...bytes].map((b) => new Uint8Array([b]))));
        const parser = new SSEParser();
        parser.feed("retry: 1500\\n\\nretry: x1\\n\\n");
        return { outcomes: [...outcomes], retry: parser.retry };
    }"""
    )
    assert results["retry"] == 1500
    assert [json.loads(outcome) for outcome in results["outcomes"]] == [
        [
            ["message", "one", ""],
            ["note", "two\n lines", ""],
            ["message", "", "7"],
            ["message", "é ☃ 😀", "7"],
            ["message", "[DONE]", "7"],
        ]
    ]
    chat.assert_no_console_errors()


@pytest.mark.browser
async def test_phone_layout_in_dark_mode(browser: Browser, gateway_url: str) -> None:
    chat = await open_chat(browser, gateway_url, width=390, height=844, dark=True)
    await chat.choose_model("fake-fast")
    await chat.send("A question asked from a phone, with a rather long line of text in it.")
    await chat.wait_reply("done")

    overflow = await chat.page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    for test_id in ("prompt", "send", "model-select"):
        await expect(chat.page.get_by_test_id(test_id)).to_be_in_viewport()
    background = await chat.page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    red, green, blue = (int(part) for part in re.findall(r"\d+", background)[:3])
    assert red + green + blue < 3 * 80, background

    await chat.page.keyboard.press("Tab")
    focused = await chat.page.evaluate(
        "() => [document.activeElement.dataset.testid, "
        "getComputedStyle(document.activeElement).outlineStyle]"
    )
    assert focused[1] != "none", focused
    chat.assert_no_console_errors()
    await chat.page.close()


@pytest.mark.browser
async def test_light_mode_is_light(browser: Browser, gateway_url: str) -> None:
    chat = await open_chat(browser, gateway_url)
    background = await chat.page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    red, green, blue = (int(part) for part in re.findall(r"\d+", background)[:3])
    assert red + green + blue > 3 * 200, background
    await chat.page.close()
