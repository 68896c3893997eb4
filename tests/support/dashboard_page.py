"""The dashboard page in Debian's headless Chromium: launching it, watching it, reading it."""

from __future__ import annotations

import asyncio
import re

from playwright.async_api import Browser, ConsoleMessage, Page, Request, expect

from tests.support.chromium import CHROMIUM, CHROMIUM_ARGS, chromium

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "chromium"]

UI_TIMEOUT_MS = 15_000
#: What the page shows for a number with no data yet (an en dash).
NO_DATA = "\u2013"
NUMBERS = ("in-flight", "tokens-1s", "tokens-60s", "requests-60s", "ttft-p50")
CHARTS = ("chart-tokens", "chart-inflight", "chart-ttft")
# A path with at least two points: the chart draws a line, not nothing.
DRAWN = re.compile(r"^M[\d.]+,[\d.]+L[\d.]+,[\d.]+")


class Watched:
    """A page with its console errors and the requests it made."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.requests: list[Request] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        page.on("request", lambda request: self.requests.append(request))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    async def numbers(self) -> list[str]:
        return [await self.page.get_by_test_id(name).inner_text() for name in NUMBERS]

    async def number(self, test_id: str) -> float | None:
        """A shown number (``12``, ``3.5``, ``41 ms``); None for the dash of no data."""
        text = (await self.page.get_by_test_id(test_id).inner_text()).removesuffix(" ms")
        return None if text == NO_DATA else float(text)

    async def expect_numbers_move(self) -> None:
        before = await self.numbers()
        for _ in range(int(UI_TIMEOUT_MS / 250)):
            await asyncio.sleep(0.25)
            if await self.numbers() != before:
                return
        raise AssertionError(f"the numbers stayed at {before}")

    async def expect_positive(self, test_id: str) -> float:
        """Wait until the number shown as ``test_id`` is above zero; return it."""
        value = None
        for _ in range(int(UI_TIMEOUT_MS / 100)):
            value = await self.number(test_id)
            if value is not None and value > 0:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"{test_id} stayed at {value}")

    async def expect_charts_drawn(self) -> None:
        for chart in CHARTS:
            line = self.page.get_by_test_id(chart).locator("path.line")
            await expect(line).to_have_attribute("d", DRAWN, timeout=UI_TIMEOUT_MS)


async def open_dashboard(browser: Browser, url: str) -> Watched:
    page = await browser.new_page(viewport={"width": 1200, "height": 900})
    watched = Watched(page)
    await page.goto(url + "/dashboard")
    return watched


async def expect_status(watched: Watched, state: str) -> None:
    await expect(watched.page.get_by_test_id("status")).to_have_attribute(
        "data-state", state, timeout=UI_TIMEOUT_MS
    )
