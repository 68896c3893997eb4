"""The dashboard against the real gateway: ``python -m gateway`` as a process, real traffic.

Traffic goes through the real API (``fake`` streams paced to last about half a second,
and ``fake-fast`` replies), so the numbers on the page come from the reply record's
observer and the request-counting middleware, not from a synthetic feed. The gateway
is stopped and started again on the same port while the page stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from playwright.async_api import Browser, expect

from tests.support.dashboard_page import (
    UI_TIMEOUT_MS,
    Watched,
    chromium,
    expect_status,
    open_dashboard,
)
from tests.support.gateway import GatewayProcess

ADMIN_KEY = "admin-key-of-the-dashboard"
API_KEY = "team-a-api-key"
# Shut down quickly: a paced stream in flight must not hold the restart up.
ENV = {"TOKENPIPE_DRAIN_SECONDS": "1", "TOKENPIPE_LOG_LEVEL": "warning"}


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


@pytest.fixture
def gateways() -> Iterator[list[GatewayProcess]]:
    """Every gateway a test starts, stopped at its end."""
    started: list[GatewayProcess] = []
    yield started
    for proc in started:
        if proc.proc.poll() is None:
            proc.stop()


async def start_gateway(
    started: list[GatewayProcess], *args: str, port: int | None = None
) -> GatewayProcess:
    proc = GatewayProcess(*args, env=ENV, port=port)
    started.append(proc)
    await asyncio.to_thread(proc.wait_ready)
    return proc


def keys_config(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    config = {"auth": {"keys": [{"name": "team-a", "key": API_KEY}], "admin_key": ADMIN_KEY}}
    path.write_bytes(orjson.dumps(config))  # JSON is YAML
    return path


async def _one_request(session: aiohttp.ClientSession, url: str, n: int) -> None:
    if n % 2:
        body: dict[str, Any] = {"model": "fake-fast", "max_tokens": 30}
    else:
        # About half a second of streaming: the in-flight count is seen above zero.
        body = {"model": "fake", "max_tokens": 20, "stream": True}
        body["fake"] = {"ttft_ms": 50, "tokens_per_second": 40}
    body["messages"] = [{"role": "user", "content": f"Dashboard traffic {n}"}]
    async with session.post(f"{url}/v1/chat/completions", json=body) as response:
        await response.read()


@contextlib.asynccontextmanager
async def traffic(url: str, api_key: str = "none", workers: int = 3) -> AsyncIterator[None]:
    """Requests through the real API until the block ends; the gateway may go away meanwhile."""
    counter = itertools.count()

    async def work() -> None:
        headers = {"Authorization": f"Bearer {api_key}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            while True:
                try:
                    await _one_request(session, url, next(counter))
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)  # down (restarting): try again shortly
                await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(work()) for _ in range(workers)]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def expect_live_numbers(watched: Watched) -> None:
    """The tiles, the model table and the charts all show the traffic."""
    assert await watched.expect_positive("in-flight") >= 1
    await watched.expect_positive("tokens-1s")
    await watched.expect_positive("requests-1s")
    await watched.expect_positive("ttft-p50")
    await watched.expect_numbers_move()
    table = watched.page.get_by_test_id("models-table")
    for model in ("fake", "fake-fast"):
        row = table.locator(f'tr[data-model="{model}"]')
        await expect(row).to_be_visible(timeout=UI_TIMEOUT_MS)
        await expect(row.locator("td").nth(1)).not_to_have_text("0", timeout=UI_TIMEOUT_MS)
    await watched.expect_charts_drawn()
    for peak in ("peak-tokens", "peak-inflight", "peak-ttft"):
        await expect(watched.page.locator(f"#{peak}")).to_contain_text(
            "peak", timeout=UI_TIMEOUT_MS
        )


@pytest.mark.browser
async def test_dashboard_shows_real_traffic_and_survives_a_restart(
    browser: Browser, gateways: list[GatewayProcess]
) -> None:
    gateway = await start_gateway(gateways)
    async with traffic(gateway.url):
        watched = await open_dashboard(browser, gateway.url)
        await expect_status(watched, "live")
        await expect_live_numbers(watched)
        await expect(watched.page.get_by_test_id("ends")).to_contain_text("length")
        await expect(watched.page.get_by_test_id("workers")).to_have_text("1")
        await expect(watched.page.get_by_test_id("key-form")).to_be_hidden()
        assert watched.errors == []

        code, _ = await asyncio.to_thread(gateway.stop)
        assert code == 0
        await expect_status(watched, "reconnecting")
        await expect(watched.page.get_by_test_id("status")).to_have_text("reconnecting…")
        await asyncio.sleep(2.5)  # at least one failed reconnection attempt

        await start_gateway(gateways, port=gateway.port)
        await expect_status(watched, "live")
        # A new process: its windows start empty and fill with the traffic again.
        await watched.expect_positive("requests-1s")
        await watched.expect_positive("tokens-1s")
        await watched.expect_numbers_move()
    streams = [r for r in watched.requests if r.url.endswith("/dashboard/events")]
    # No key needed: a probe with fetch, then the browser's EventSource.
    assert "eventsource" in {r.resource_type for r in streams}
    assert [await r.header_value("authorization") for r in streams] == [None] * len(streams)
    # While the gateway was down the browser logged the refused connections; only those.
    assert all("ERR_CONNECTION_REFUSED" in text for text in watched.errors), watched.errors


@pytest.mark.browser
async def test_dashboard_asks_for_the_admin_key_once_and_keeps_keys_out_of_urls(
    browser: Browser, gateways: list[GatewayProcess], tmp_path: Path
) -> None:
    gateway = await start_gateway(gateways, "--config", str(keys_config(tmp_path)))
    async with traffic(gateway.url, api_key=API_KEY):
        watched = await open_dashboard(browser, gateway.url)
        page = watched.page
        await expect_status(watched, "key")
        await expect(page.get_by_test_id("key-form")).to_be_visible()

        # An API key is not the admin key.
        await page.get_by_test_id("admin-key").fill(API_KEY)
        await page.get_by_test_id("key-submit").click()
        await expect(page.get_by_test_id("key-error")).to_have_text(
            "That key was not accepted.", timeout=UI_TIMEOUT_MS
        )
        await expect_status(watched, "key")
        assert await page.evaluate("Object.values(sessionStorage)") == []

        await page.get_by_test_id("admin-key").fill(ADMIN_KEY)
        await page.get_by_test_id("key-submit").click()
        await expect_status(watched, "live")
        await expect(page.get_by_test_id("key-form")).to_be_hidden()
        await expect_live_numbers(watched)
        assert await page.evaluate("Object.values(sessionStorage)") == [ADMIN_KEY]

        # A reload reuses the key from sessionStorage: asked once only.
        await page.reload()
        await expect_status(watched, "live")
        await expect(page.get_by_test_id("key-form")).to_be_hidden()
        await watched.expect_numbers_move()

    assert watched.requests
    for request in watched.requests:
        assert ADMIN_KEY not in request.url, request.url
        assert API_KEY not in request.url, request.url
    streams = [r for r in watched.requests if r.url.endswith("/dashboard/events")]
    assert "eventsource" not in {r.resource_type for r in streams}
    authorized = [await r.header_value("authorization") for r in streams]
    assert f"Bearer {ADMIN_KEY}" in authorized
    # The probe's and the refused key's 401s are logged by the browser; only those.
    assert all("401" in text for text in watched.errors), watched.errors


async def test_raw_events_stream_of_the_real_gateway(
    gateways: list[GatewayProcess], tmp_path: Path
) -> None:
    """What ``curl -N -H 'Authorization: Bearer …' /dashboard/events`` shows."""
    gateway = await start_gateway(gateways, "--config", str(keys_config(tmp_path)))
    url = f"{gateway.url}/dashboard/events"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as refused:
            assert refused.status == 401
            assert (await refused.json())["error"]["code"] == "invalid_api_key"
        async with session.get(url, headers={"Authorization": f"Bearer {API_KEY}"}) as refused:
            assert refused.status == 401

        headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Last-Event-ID": "41"}
        async with session.get(url, headers=headers) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
            async with asyncio.timeout(10):
                frames = [await response.content.readuntil(b"\n\n") for _ in range(2)]
    for expected_id, frame in zip((42, 43), frames, strict=True):
        lines = frame.decode().splitlines()
        assert lines[:3] == ["event: stats", f"id: {expected_id}", "retry: 2000"], lines
        assert lines[3].startswith("data: {")
        stats = orjson.loads(lines[3].removeprefix("data: "))
        assert stats["workers"] == 1
        assert stats["in_flight"] == 0
