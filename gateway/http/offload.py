"""Parsing a request body off the event loop when it is large.

Validating a body of a few megabytes (one long message, or 100,000 short ones)
and building its dialect-neutral request takes from tens of milliseconds to a
second of CPU. On the event loop that would freeze every other stream and
``/healthz`` meanwhile, so bodies above :data:`OFFLOAD_BODY_BYTES` are parsed in a
thread. Small bodies (nearly all) stay on the loop: a thread hop costs more than
parsing them.
"""

from __future__ import annotations

import asyncio

from gateway.dialects.base import Dialect, DialectRequest, InboundRequest
from gateway.dialects.large_body import LARGE_BODY_BYTES

#: Bodies larger than this are parsed in a thread (and validated in bounded steps
#: by the dialects that can: :mod:`gateway.dialects.large_body`).
OFFLOAD_BODY_BYTES = LARGE_BODY_BYTES


def _parse(dialect: Dialect, body: bytes) -> tuple[DialectRequest, InboundRequest]:
    parsed = dialect.parse(body)
    return parsed, parsed.inbound


async def parse_body(dialect: Dialect, body: bytes) -> tuple[DialectRequest, InboundRequest]:
    """``dialect.parse(body)`` and its inbound request (raises its ``BadRequest``)."""
    if len(body) > OFFLOAD_BODY_BYTES:
        return await asyncio.to_thread(_parse, dialect, body)
    return _parse(dialect, body)
