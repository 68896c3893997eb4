"""The chat page in a real headless Firefox (Debian's firefox-esr, over WebDriver BiDi).

The Chromium suite (tests/test_chat_page.py) covers the page in depth; this one checks
that the same page streams, stops and stays safe in Firefox.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog

from tests.support.firefox_bidi import FIREFOX, Firefox, firefox

pytestmark = pytest.mark.browser


@pytest.fixture
async def browser() -> AsyncIterator[Firefox]:
    if not FIREFOX.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{FIREFOX} is missing in CI: install Debian's firefox-esr package")
        pytest.skip(f"{FIREFOX} not installed (apt-get install firefox-esr)")
    async with firefox() as ff:
        yield ff


REPLY = "document.querySelectorAll('[data-testid=assistant-message]')"
LAST_BODY = f"({REPLY}[{REPLY}.length - 1]?.querySelector('.body')?.textContent ?? '')"
LAST_STATE = f"({REPLY}[{REPLY}.length - 1]?.dataset.state ?? '')"


async def send(ff: Firefox, model: str, text: str) -> None:
    # The list is filled from /v1/models once the page loaded.
    await ff.wait_for("document.querySelectorAll('[data-testid=model-select] option').length >= 2")
    await ff.js(
        "(() => {"
        f"  const select = document.querySelector('[data-testid=model-select]');"
        f"  select.value = {model!r}; select.dispatchEvent(new Event('change', {{bubbles: true}}));"
        "  const prompt = document.querySelector('[data-testid=prompt]');"
        f"  prompt.value = {text!r};"
        "  prompt.dispatchEvent(new Event('input', {bubbles: true}));"
        "  document.querySelector('[data-testid=send]').click();"
        "  return true;"
        "})()"
    )


async def test_reply_streams_in_firefox(browser: Firefox, gateway_url: str) -> None:
    await browser.goto(gateway_url + "/")
    options = await browser.wait_for(
        "(o => o.length >= 2 && o)("
        "[...document.querySelectorAll('[data-testid=model-select] option')].map(o => o.value))"
    )
    assert {"fake", "fake-fast"} <= set(options)
    await send(browser, "fake", "Hello from Firefox")
    samples: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text, state = await browser.js(f"[{LAST_BODY}, {LAST_STATE}]")
        if not samples or text != samples[-1]:
            samples.append(text)
        if state and state != "streaming":
            break
        await asyncio.sleep(0.05)
    assert state == "done"
    grown = [s for s in samples if s]
    assert len(grown) >= 5, "the reply did not grow in visible steps"
    squeeze = ["".join(s.split()) for s in grown]
    assert all(b.startswith(a[: len(a) - 3]) for a, b in itertools.pairwise(squeeze))
    assert "Hello from Firefox" in samples[-1]
    assert browser.console_errors == []


async def test_stop_in_firefox_cancels_generation(browser: Firefox, gateway_url: str) -> None:
    await browser.goto(gateway_url + "/")
    with structlog.testing.capture_logs() as logs:
        await send(browser, "fake", "Please stop me")
        await browser.wait_for(f"{LAST_BODY}.length > 20")
        await browser.js("document.querySelector('[data-testid=stop]').click() || true")
        await browser.wait_for(f"{LAST_STATE} === 'stopped'")
        frozen = await browser.js(LAST_BODY)
        await asyncio.sleep(0.5)
        assert await browser.js(LAST_BODY) == frozen
        reasons: list[Any] = []
        for _ in range(200):
            reasons = [e["reason"] for e in logs if e["event"] == "stream_finished"]
            if reasons:
                break
            await asyncio.sleep(0.05)
    assert reasons == ["cancelled"]
    assert browser.console_errors == []


async def test_user_text_is_text_in_firefox(browser: Firefox, gateway_url: str) -> None:
    xss = '<img src=x onerror="window.__xss=1">'
    await browser.goto(gateway_url + "/")
    await send(browser, "fake-fast", xss)
    await browser.wait_for(f"{LAST_STATE} === 'done'")
    shown = await browser.js(
        "[...document.querySelectorAll('[data-testid=user-message]')].map(m => m.textContent)"
    )
    assert any(xss in text for text in shown)
    assert await browser.js("document.querySelectorAll('img').length") == 0
    assert await browser.js("window.__xss === undefined")
