"""Running the gateway: event loop, signals, graceful drain, and worker processes.

On SIGTERM or SIGINT a server *drains*: it keeps its socket open so that new
requests get a clear 503 (and ``/healthz`` says ``draining``, so load balancers
move on), lets replies in flight run to completion for up to ``drain_seconds``,
then cuts those still open with one in-band error event, and exits 0.

On SIGHUP it reloads its configuration (:mod:`gateway.reload`) without stopping:
replies in flight finish on the configuration they started with.

With ``workers > 1``, :mod:`gateway.server.workers` runs that many of these.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from aiohttp import web

from config import Settings
from gateway.app import create_app
from gateway.observability.logging import configure_logging
from gateway.reload import RELOADER
from gateway.server.header_deadline import GuardedAppRunner
from gateway.server.heap_trim import trim_heap_every
from gateway.server.preflight import refusals
from gateway.state import STATE

log = structlog.get_logger("tokenpipe.server")

#: After the drain deadline, how long cut replies get to write their error event.
_CUT_GRACE_SECONDS = 2.0


def _raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard one.

    Each relayed stream holds two sockets; the common default soft limit (1,024)
    would cap a gateway near 500 streams.
    """
    try:
        import resource
    except ImportError:  # Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return
        log.debug("open_files_limit_raised", soft=soft, now=target)


def _freeze_startup_objects() -> None:
    """Keep what start-up built (modules, schemas, the app) out of garbage collection.

    A full collection walks every tracked object and holds the GIL meanwhile: over
    the ~60,000 objects the gateway has after start-up that took 35-70 ms, and
    allocation churn (a 100,000-token reply, a body of 100,000 messages) triggers
    one every few hundred milliseconds. They live as long as the process, so they
    are moved to the permanent generation once; collections then walk only what
    requests created since.
    """
    gc.collect()
    gc.freeze()


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # Windows, or not installed
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _stop_signals() -> asyncio.Future[int]:
    """SIGTERM/SIGINT handled from now on: the future of the first one's number.

    A second signal during the drain is ignored: the drain has its own deadline.
    """
    loop = asyncio.get_running_loop()
    received: asyncio.Future[int] = loop.create_future()

    def on_signal(signum: int) -> None:
        if not received.done():
            received.set_result(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return received


async def drain(app: web.Application, seconds: float) -> None:
    """Refuse new replies, wait for those in flight, then cut what remains."""
    state = app[STATE]
    state.draining = True
    log.info("draining", active_streams=state.active, drain_seconds=seconds)
    if not await state.wait_idle(seconds):
        cut = state.cut_inflight()
        log.warning("drain_deadline_reached", cut_streams=cut)
        await state.wait_idle(_CUT_GRACE_SECONDS)


async def run_server(
    settings: Settings,
    *,
    reuse_port: bool = False,
    overrides: Mapping[str, Any] | None = None,
    on_reloadable: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain and return; reload on SIGHUP.

    ``overrides``: the flags ``settings`` came from, applied again by a reload.
    ``on_reloadable`` is called once SIGHUP is handled (a worker tells its supervisor).
    """
    app = create_app(settings, overrides=overrides)
    runner = GuardedAppRunner(
        app,
        header_timeout=settings.request_read_timeout_seconds,
        keepalive_timeout=settings.keepalive_timeout_seconds,
        # Cancel a handler when its client disconnects: that is how generation stops.
        handler_cancellation=True,
        access_log=None,
        # Replies were drained already; what is left is idle keep-alive connections.
        shutdown_timeout=1.0,
        # After an early error (413, 408) aiohttp reads what is left of the body before
        # closing, so the client can read the response; a slow sender gets 2 s, not 10.
        lingering_time=2.0,
    )
    await runner.setup()
    loop = asyncio.get_running_loop()
    if hasattr(signal, "SIGHUP"):  # not on Windows
        # Before the socket opens: SIGHUP's default action would end the process.
        loop.add_signal_handler(signal.SIGHUP, app[RELOADER].on_signal)
        if on_reloadable is not None:
            on_reloadable()
    try:
        site = web.TCPSite(
            runner, settings.host, settings.port, reuse_port=reuse_port or None, backlog=1024
        )
        # Before the socket opens: a client may connect, and send SIGTERM, at once.
        stopped = _stop_signals()
        _freeze_startup_objects()
        await site.start()
        log.info("gateway_listening", host=settings.host, port=settings.port, pid=os.getpid())
        trimming = asyncio.create_task(trim_heap_every(settings.heap_trim_seconds))
        try:
            signum = await stopped
        finally:
            trimming.cancel()
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        # A reload may have changed it.
        await drain(app, app[STATE].settings.drain_seconds)
    finally:
        await runner.cleanup()
    log.info("gateway_stopped")


def serve(settings: Settings, overrides: Mapping[str, Any] | None = None) -> None:
    """Serve until SIGINT/SIGTERM, drain in-flight replies and exit 0.

    ``overrides``: the flags ``settings`` came from (a reload loads them again).
    """
    configure_logging(settings.log_level, settings.log_format)
    problems = refusals(settings)
    if problems:
        for problem in problems:
            print(f"tokenpipe: {problem}", file=sys.stderr)
        sys.exit(2)
    _raise_open_files_limit()
    log.info("gateway_starting", host=settings.host, port=settings.port, workers=settings.workers)
    if settings.workers > 1:
        from gateway.server.workers import supervise_workers

        sys.exit(supervise_workers(settings, overrides or {}))
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(run_server(settings, overrides=overrides))
