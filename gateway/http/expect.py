"""``Expect: 100-continue``: refuse an over-limit body before the client sends it.

aiohttp's default expect handler answers ``100 Continue`` whatever the
``Content-Length``, so a client announcing a body over ``max_body_bytes`` was told to
send it, only to get a 413 after. This one answers the 413 at once (and closes:
the body will not be read).
"""

from __future__ import annotations

from aiohttp import web

from gateway.errors import PayloadTooLarge
from gateway.http.middleware import json_error, request_id_of
from gateway.state import STATE


async def expect_within_limit(request: web.Request) -> web.StreamResponse | None:
    """The route's ``expect_handler``: 413 over the limit, else ``100 Continue``."""
    limit = request.app[STATE].settings.max_body_bytes
    expect = request.headers.get("Expect", "")
    if request.content_length is not None and request.content_length > limit:
        response = json_error(
            PayloadTooLarge(
                f"The request body is {request.content_length} bytes; the limit is {limit}."
            ),
            request_id_of(request),
        )
        response.force_close()
        return response
    if request.version >= (1, 1):
        if expect.lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect[:100]}")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # As aiohttp's own handler: the interim response is not part of the body count.
        request.writer.output_size = 0
    return None
