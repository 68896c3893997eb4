"""Running the application: the event loop, signals and graceful shutdown."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from config import Settings
from gateway.app import create_app
from gateway.logging import configure_logging

log = structlog.get_logger("tokenpipe.server")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # Windows, or not installed
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def serve(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM, then drain in-flight streams and exit 0."""
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    log.info("gateway_starting", host=settings.host, port=settings.port)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        # Cancel a handler when its client disconnects: that is how generation stops.
        handler_cancellation=True,
        shutdown_timeout=settings.drain_seconds,
        access_log=None,
        print=None,
        loop=_new_loop(),
    )
