"""The dashboard page in a real headless Chromium, fed synthetic traffic.

The server is a tiny aiohttp app built here (the chat page's static route and the
dashboard's two handlers) on a fixed loopback port, so it can be stopped and started
again on the same port while the page stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from playwright.async_api import Browser, expect

from gateway.http.static import setup_ui
from gateway.observability.dashboard import Dashboard, setup_dashboard
from gateway.observability.live_stats import LiveStats
from tests.gateway.observability.support import Facts
from tests.support.dashboard_page import (
    UI_TIMEOUT_MS,
    chromium,
    expect_status,
    open_dashboard,
)
from tests.support.ports import free_port

pytestmark = pytest.mark.browser

ADMIN_KEY = "admin-secret-123"


@web.middleware
async def require_admin_key(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """What the real app's admin-key middleware will do for the events stream."""
    authorized = request.headers.get("Authorization") == f"Bearer {ADMIN_KEY}"
    if request.path == "/dashboard/events" and not authorized:
        return web.json_response({"error": {"message": "admin key needed"}}, status=401)
    return await handler(request)


class Server:
    """The page and its stream on one port; stop() and start() again like a restart."""

    def __init__(self, live: LiveStats, *, admin_key: bool = False) -> None:
        self.live = live
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._admin_key = admin_key
        self._runner: web.AppRunner | None = None
        self._draining = asyncio.Event()

    async def start(self) -> None:
        self._draining = asyncio.Event()
        app = web.Application(middlewares=[require_admin_key] if self._admin_key else [])
        setup_ui(app)
        setup_dashboard(app, Dashboard(self.live, self._draining))
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        self._draining.set()  # open streams end cleanly first
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def synthetic_traffic(live: LiveStats) -> None:
    """Replies of a few hundred ms, started every 50 ms, on two models."""
    rng = random.Random(11)
    replies: set[asyncio.Task[None]] = set()

    async def reply() -> None:
        live.record_request()
        live.stream_started()
        try:
            duration = rng.uniform(0.1, 0.8)
            await asyncio.sleep(duration)
            live.record_reply(
                Facts(
                    model=rng.choice(["fake", "gpt-4o"]),
                    ttft=rng.uniform(0.02, 0.1),
                    duration=duration,
                    completion_tokens=rng.randint(5, 60),
                )
            )
        finally:
            live.stream_ended()

    try:
        while True:
            task = asyncio.create_task(reply())
            replies.add(task)
            task.add_done_callback(replies.discard)
            await asyncio.sleep(0.05)
    finally:
        for task in list(replies):
            task.cancel()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


@contextlib.asynccontextmanager
async def running(admin_key: bool = False) -> AsyncIterator[Server]:
    live = LiveStats(["fake", "gpt-4o"])
    server = Server(live, admin_key=admin_key)
    await server.start()
    traffic = asyncio.create_task(synthetic_traffic(live))
    try:
        yield server
    finally:
        traffic.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await traffic
        await server.stop()


async def test_numbers_and_charts_move_with_traffic(browser: Browser) -> None:
    async with running() as server:
        watched = await open_dashboard(browser, server.url)
        await expect_status(watched, "live")
        await expect(watched.page.get_by_test_id("status")).to_have_text("live")
        await watched.expect_numbers_move()
        await watched.expect_numbers_move()
        await watched.expect_charts_drawn()
        table = watched.page.get_by_test_id("models-table")
        await expect(table.locator('tr[data-model="fake"]')).to_be_visible(timeout=UI_TIMEOUT_MS)
        await expect(table.locator('tr[data-model="gpt-4o"]')).to_be_visible()
        await expect(watched.page.get_by_test_id("ends")).to_contain_text("stop")
        await expect(watched.page.get_by_test_id("workers")).to_have_text("1")
        await expect(watched.page.get_by_test_id("key-form")).to_be_hidden()
        kinds = {r.resource_type for r in watched.requests if r.url.endswith("/dashboard/events")}
        assert "eventsource" in kinds  # no key needed: the browser's EventSource
        assert watched.errors == []


async def test_reconnects_after_a_server_restart(browser: Browser) -> None:
    async with running() as server:
        watched = await open_dashboard(browser, server.url)
        await expect_status(watched, "live")
        await watched.expect_numbers_move()
        assert watched.errors == []

        await server.stop()
        await expect_status(watched, "reconnecting")
        await expect(watched.page.get_by_test_id("status")).to_have_text("reconnecting…")
        await asyncio.sleep(2.5)  # at least one failed reconnection attempt
        await server.start()
        await expect_status(watched, "live")
        await watched.expect_numbers_move()
    # While the server was down, the browser logged the refused connections; only those.
    assert all("ERR_CONNECTION_REFUSED" in text for text in watched.errors), watched.errors


async def test_asks_for_the_admin_key_and_keeps_it_out_of_urls(browser: Browser) -> None:
    async with running(admin_key=True) as server:
        watched = await open_dashboard(browser, server.url)
        page = watched.page
        await expect_status(watched, "key")
        await expect(page.get_by_test_id("key-form")).to_be_visible()

        await page.get_by_test_id("admin-key").fill("wrong-key")
        await page.get_by_test_id("key-submit").click()
        await expect(page.get_by_test_id("key-error")).to_have_text(
            "That key was not accepted.", timeout=UI_TIMEOUT_MS
        )
        await page.get_by_test_id("admin-key").fill(ADMIN_KEY)
        await page.get_by_test_id("key-submit").click()
        await expect_status(watched, "live")
        await expect(page.get_by_test_id("key-form")).to_be_hidden()
        await watched.expect_numbers_move()
        await watched.expect_charts_drawn()
        assert await page.evaluate("Object.values(sessionStorage)") == [ADMIN_KEY]

        # A reload reuses the key from sessionStorage: no second question.
        await page.reload()
        await expect_status(watched, "live")
        await expect(page.get_by_test_id("key-form")).to_be_hidden()
        await watched.expect_numbers_move()

        assert all(ADMIN_KEY not in r.url and "wrong-key" not in r.url for r in watched.requests)
        streams = [r for r in watched.requests if r.url.endswith("/dashboard/events")]
        assert "eventsource" not in {r.resource_type for r in streams}
        authorized = [await r.header_value("authorization") for r in streams]
        assert f"Bearer {ADMIN_KEY}" in authorized
    # The 401s of the probe and of the wrong key are logged by the browser; only those.
    assert all("401" in text for text in watched.errors), watched.errors
