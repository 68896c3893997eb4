"""structlog configuration: JSON lines by default, a readable console for humans.

Configured once, by the CLI (never at import time). Request-scoped fields
(``request_id``, ``model``, ``route``, ``provider``) are bound through contextvars by
the middleware and the relay, so every event of a request carries them.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import orjson
import structlog

LogFormat = Literal["auto", "json", "console"]


def configure_logging(level: str = "info", fmt: LogFormat = "auto") -> None:
    """Route structlog (and the stdlib's aiohttp logs) to stderr."""
    console = fmt == "console" or (fmt == "auto" and (level == "debug" or sys.stderr.isatty()))
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if console:
        renderer = structlog.dev.ConsoleRenderer()
        factory: structlog.typing.WrappedLogger = structlog.PrintLoggerFactory(sys.stderr)
    else:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory = structlog.BytesLoggerFactory(sys.stderr.buffer)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # aiohttp's own loggers (access log off: stream_finished says more per request).
    logging.basicConfig(
        level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(message)s"
    )
