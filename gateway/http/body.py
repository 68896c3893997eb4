"""Reading a request body: bounded in size and in time."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.errors import BadRequest, PayloadTooLarge, RequestTimeout


async def read_body(request: web.Request, limit: int, seconds: float) -> bytes:
    """The body, refusing one over ``limit`` before reading it whole, or too slow."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"The request body is {request.content_length} bytes; the limit is {limit}."
        )
    try:
        if request.content.is_eof():  # the whole body is here: reading cannot wait
            return await request.read()
        async with asyncio.timeout(seconds):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.") from None
    except web.RequestPayloadError:
        # e.g. ``Content-Encoding: gzip`` on a body that is not gzip.
        encoding = request.headers.get("Content-Encoding", "identity")
        raise BadRequest(
            f"The request body could not be decoded (Content-Encoding: {encoding}).",
            code="invalid_body",
        ) from None
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {seconds:g} s.") from None
