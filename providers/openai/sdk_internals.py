"""The openai SDK's internals this provider relies on, in one place.

Each function works around a cost or a gap of the SDK's public API and says which;
``tests/test_third_party_internals.py`` fails loudly when an SDK upgrade changes
what they rely on (the ``openai`` dependency has an upper bound for the same reason).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import aiohttp
import httpx2


def raw_body_chunks(response: httpx2.Response) -> AsyncGenerator[bytes, None]:
    """The body's chunks; without a content encoding, straight from the transport.

    ``aiter_bytes`` stacks two more generators, a decoder and a re-chunker on every
    read: microseconds per token that a plain event stream does not need. The SDK's
    context manager still closes the response (and so the connection).
    """
    stream = response.stream
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity" and isinstance(stream, httpx2.AsyncByteStream):
        chunks = stream.__aiter__()
        if isinstance(chunks, AsyncGenerator):
            return chunks
    return response.aiter_bytes()


def aiohttp_cause(exc: BaseException) -> aiohttp.ClientError | None:
    """The aiohttp exception at the root of ``exc``'s cause chain, if any.

    The SDK's vendored transport maps every connection error (refused, reset) to
    httpx's ``ConnectTimeout``; the cause it keeps says what really happened.
    """
    seen: BaseException | None = exc
    for _ in range(8):  # the SDK and the transport wrap it twice at most
        if seen is None:
            return None
        if isinstance(seen, aiohttp.ClientError):
            return seen
        seen = seen.__cause__
    return None
