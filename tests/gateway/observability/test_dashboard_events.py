"""GET /dashboard/events over a real aiohttp test server: exact framing, resume, drain."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import orjson
import pytest
from aiohttp import ClientResponse, web
from aiohttp.pytest_plugin import AiohttpClient

from gateway.http.static import CONTENT_SECURITY_POLICY
from gateway.observability.dashboard import Dashboard, setup_dashboard
from gateway.observability.live_stats import LiveStats
from tests.gateway.observability.support import Facts

STATS = re.compile(rb"event: stats\nid: (\d+)\nretry: 2000\ndata: (\{[^\n]*\})\n\n")


def make_app(draining: asyncio.Event | Callable[[], bool]) -> tuple[web.Application, LiveStats]:
    live = LiveStats(["fake"])
    app = web.Application()
    setup_dashboard(app, Dashboard(live, draining, interval=0.05, ping_interval=0.12))
    return app, live


async def read_frames(response: ClientResponse, count: int) -> list[bytes]:
    """The next ``count`` frames, each with its blank line."""
    frames: list[bytes] = []
    async with asyncio.timeout(10):
        while len(frames) < count:
            frames.append(await response.content.readuntil(b"\n\n"))
    return frames


async def test_stats_frames_are_exact(aiohttp_client: AiohttpClient) -> None:
    draining = asyncio.Event()
    app, live = make_app(draining)
    live.stream_started()
    live.record_reply(Facts())
    client = await aiohttp_client(app)
    response = await client.get("/dashboard/events")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in response.headers

    frames = await read_frames(response, 8)
    stats = [frame for frame in frames if frame != b": ping\n\n"]
    assert len(stats) < len(frames), "no keep-alive ping"
    ids = []
    for frame in stats:
        match = STATS.fullmatch(frame)
        assert match is not None, frame
        ids.append(int(match[1]))
        data = orjson.loads(match[2])
        assert data["in_flight"] == 1
        assert data["workers"] == 1
    assert ids == list(range(1, len(stats) + 1))

    draining.set()  # the app shuts down: the stream ends, cleanly
    async with asyncio.timeout(5):
        rest = await response.content.read()
    # Whatever was in flight arrives whole; then the body ends.
    for frame in rest.split(b"\n\n")[:-1]:
        assert frame == b": ping" or STATS.fullmatch(frame + b"\n\n"), frame
    assert rest.endswith(b"\n\n") or rest == b""
    assert response.content.at_eof()


async def test_ids_continue_after_a_reconnect(aiohttp_client: AiohttpClient) -> None:
    app, _ = make_app(asyncio.Event())
    client = await aiohttp_client(app)
    response = await client.get("/dashboard/events", headers={"Last-Event-ID": "41"})
    (frame,) = await read_frames(response, 1)
    match = STATS.fullmatch(frame)
    assert match is not None
    assert match[1] == b"42"
    response.close()


@pytest.mark.parametrize("header", ["", "abc", "-3", "9" * 40])
async def test_a_bad_last_event_id_starts_at_one(
    aiohttp_client: AiohttpClient, header: str
) -> None:
    app, _ = make_app(asyncio.Event())
    client = await aiohttp_client(app)
    response = await client.get("/dashboard/events", headers={"Last-Event-ID": header})
    (frame,) = await read_frames(response, 1)
    assert frame.startswith(b"event: stats\nid: 1\n")
    response.close()


async def test_a_draining_callable_ends_the_stream(aiohttp_client: AiohttpClient) -> None:
    state = {"draining": False}
    app, _ = make_app(lambda: state["draining"])
    client = await aiohttp_client(app)
    response = await client.get("/dashboard/events")
    await read_frames(response, 2)
    state["draining"] = True
    async with asyncio.timeout(5):
        await response.content.read()
    assert response.content.at_eof()


async def test_the_page_carries_the_chat_pages_security_headers(
    aiohttp_client: AiohttpClient,
) -> None:
    app, _ = make_app(asyncio.Event())
    client = await aiohttp_client(app)
    response = await client.get("/dashboard")
    assert response.status == 200
    assert response.content_type == "text/html"
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    html = await response.text()
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html) is None
    assert "<style" not in html
    assert " style=" not in html
