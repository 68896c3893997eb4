"""Observability: the live dashboard's page and its SSE feed of :class:`LiveStats`.

``GET /dashboard/events`` sends one ``event: stats`` per second (a
:meth:`LiveStats.snapshot <gateway.observability.live_stats.LiveStats.snapshot>`),
each with an increasing ``id`` (continuing from ``Last-Event-ID`` after a
reconnect) and ``retry: 2000``, a ``: ping`` comment every ``ping_interval``, and
ends cleanly when the app starts draining.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import orjson
from aiohttp import web

from gateway.http import static as ui
from gateway.observability.live_stats import LiveStats
from gateway.streaming import framer as sse
from gateway.streaming.writer import ClientGone, EventStream, SendTimeout

#: The browser's reconnection delay, sent with every event.
RETRY_MS = 2000


@dataclass(slots=True)
class Dashboard:
    """The dashboard's app state: its numbers and when to stop streaming them."""

    stats: LiveStats
    #: Set (or true) once the app is shutting down: open streams end within a tick.
    draining: asyncio.Event | Callable[[], bool]
    interval: float = 1.0
    ping_interval: float = 15.0
    send_timeout: float = 10.0

    def is_draining(self) -> bool:
        if isinstance(self.draining, asyncio.Event):
            return self.draining.is_set()
        return self.draining()

    async def pause(self) -> None:
        """Wait one interval, or less if draining starts."""
        if isinstance(self.draining, asyncio.Event):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self.draining.wait()
            return
        deadline = asyncio.get_running_loop().time() + self.interval
        while not self.draining():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.1))


DASHBOARD = web.AppKey("dashboard", Dashboard)


def _resumed_id(request: web.Request) -> int:
    last = request.headers.get("Last-Event-ID", "")
    return int(last) if last.isdigit() and len(last) < 18 else 0


async def dashboard_events(request: web.Request) -> web.StreamResponse:
    """``GET /dashboard/events``: ``event: stats`` once per interval, until draining."""
    request.app[_GUARD](request)  # the admin key, when keys are on
    dash = request.app[DASHBOARD]
    stream = EventStream(request, headers={}, send_timeout=dash.send_timeout)
    loop = asyncio.get_running_loop()
    event_id = _resumed_id(request)
    last_ping = loop.time()
    try:
        await stream.open()
        while not dash.is_draining():
            event_id += 1
            data = orjson.dumps(dash.stats.snapshot())
            await stream.send(sse.encode(data, event="stats", id=str(event_id), retry=RETRY_MS))
            await dash.pause()
            if loop.time() - last_ping >= dash.ping_interval:
                await stream.ping()
                last_ping = loop.time()
    except (ClientGone, SendTimeout):
        return stream.response
    await stream.close()
    return stream.response


async def dashboard_page(request: web.Request) -> web.Response:
    """``GET /dashboard``: the page, with the chat page's security headers."""
    page = request.app[_PAGE]
    return web.Response(
        body=page.body,
        content_type=page.content_type,
        charset="utf-8",
        headers={
            "Content-Security-Policy": ui.CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
        },
    )


_PAGE = web.AppKey("dashboard_page", ui.StaticFile)
#: Raises (401) unless the request may read the dashboard's events.
Guard = Callable[[web.Request], None]
_GUARD: web.AppKey[Guard] = web.AppKey("dashboard_guard")


async def _publishing(app: web.Application) -> AsyncIterator[None]:
    stats = app[DASHBOARD].stats
    task = asyncio.create_task(stats.publish_forever()) if stats.share_dir else None
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _open_to_all(request: web.Request) -> None:
    return None


def setup_dashboard(
    app: web.Application, dashboard: Dashboard, *, guard: Guard = _open_to_all
) -> None:
    """Add ``GET /dashboard`` and ``GET /dashboard/events``, and the sibling publisher.

    The page's scripts and styles are served by :func:`gateway.http.static.setup_ui`'s
    ``/static/{name}``. ``guard`` checks each ``/dashboard/events`` request (the
    admin key, when keys are on); the page asks for the key when it gets a 401.
    """
    app[DASHBOARD] = dashboard
    app[_GUARD] = guard
    app[_PAGE] = ui.load_static_files()["dashboard.html"]
    app.cleanup_ctx.append(_publishing)
    app.router.add_get("/dashboard", dashboard_page, name="dashboard")
    app.router.add_get("/dashboard/events", dashboard_events, name="dashboard_events")
