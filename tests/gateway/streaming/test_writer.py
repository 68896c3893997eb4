"""The SSE writer on the wire: chunked framing, coalescing, HTTP/1.0."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpClient
from aiohttp.test_utils import TestClient
from aiohttp.typedefs import Handler

from gateway.http.middleware import REQUEST_ID
from gateway.streaming.writer import EventStream
from tests.support.sse_client import chat, parse_events


async def raw_exchange(
    url: str, body: dict[str, Any], version: str = "1.1"
) -> tuple[bytes, list[tuple[float, bytes]]]:
    """POST over a raw socket; return the head and the body's (arrival time, chunk) list."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    payload = orjson.dumps(body)
    writer.write(
        f"POST /v1/chat/completions HTTP/{version}\r\nHost: localhost\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    head = await reader.readuntil(b"\r\n\r\n")
    started = time.monotonic()
    chunks: list[tuple[float, bytes]] = []
    if b"chunked" in head.lower():
        while True:
            size = int((await reader.readline()).strip(), 16)
            if size == 0:
                break
            chunks.append((time.monotonic() - started, await reader.readexactly(size)))
            await reader.readexactly(2)
    else:
        while data := await reader.read(65536):
            chunks.append((time.monotonic() - started, data))
    writer.close()
    return head, chunks


async def serve(aiohttp_client: AiohttpClient, handler: Handler) -> TestClient[Any, Any]:
    """A client of an app serving ``handler`` at ``/``."""
    app = web.Application()
    app.router.add_get("/", handler)
    return await aiohttp_client(app)


async def test_burst_of_events_leaves_in_few_chunks(gateway_url: str) -> None:
    head, chunks = await raw_exchange(gateway_url, chat(fake={"reply_tokens": 500}))
    assert b"Transfer-Encoding: chunked" in head
    data, _ = parse_events(b"".join(c for _, c in chunks))
    assert data[-1] == "[DONE]"
    assert len(data) == 500 + 3  # role, 500 tokens, finish, [DONE]
    # fake-fast yields to the loop every 32 tokens: each turn's events share a chunk.
    assert len(chunks) < 100


async def test_paced_events_are_not_held_back(gateway_url: str) -> None:
    body = chat(fake={"reply_tokens": 12, "tokens_per_second": 25})
    _, chunks = await raw_exchange(gateway_url, body)
    data, _ = parse_events(b"".join(c for _, c in chunks))
    assert len(data) == 12 + 3
    # Every paced token left on its own, as it was generated (the typing effect).
    token_chunks = [(t, c) for t, c in chunks if b'"content":"' in c and b'"role"' not in c]
    assert len(token_chunks) >= 11
    assert token_chunks[-1][0] - token_chunks[0][0] >= 0.3


async def test_http_10_client_gets_an_unchunked_stream(gateway_url: str) -> None:
    head, chunks = await raw_exchange(gateway_url, chat(max_tokens=40), version="1.0")
    assert head.startswith(b"HTTP/1.1 200 OK") or head.startswith(b"HTTP/1.0 200 OK")
    assert b"chunked" not in head.lower()
    data, _ = parse_events(b"".join(c for _, c in chunks))
    assert data[-1] == "[DONE]"
    assert len(data) == 40 + 3


async def test_an_open_stream_keeps_no_copy_of_its_headers(aiohttp_client: AiohttpClient) -> None:
    """Regression (memory per open stream): a streamed response held its headers,
    rate-limit values and all, for as long as it was open; they are sent with the
    status line and dropped, and the client still gets every one."""
    held: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        stream = EventStream(
            request, headers={REQUEST_ID: "abc", "x-ratelimit-limit-requests": "7"}, send_timeout=5
        )
        await stream.open()
        held.append(len(stream.response.headers))
        await stream.send(b"data: x\n\n")
        await stream.close()
        return stream.response

    client = await serve(aiohttp_client, handler)
    async with client.get("/") as response:
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert response.headers["X-Request-ID"] == "abc"
        assert response.headers["x-ratelimit-limit-requests"] == "7"
        assert response.headers["X-Accel-Buffering"] == "no"
        assert await response.read() == b"data: x\n\n"
    assert held == [0]


async def test_status_line_headers_and_first_event_leave_in_one_write(
    aiohttp_client: AiohttpClient,
) -> None:
    """Regression (time to first token): ``prepare()`` sent the headers in a write of
    their own, one system call before the first event."""
    writes: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        write, writelines = transport.write, transport.writelines

        def spy_write(data: Any) -> None:
            writes.append(bytes(data))
            write(data)

        def spy_writelines(lines: Any) -> None:
            writes.append(b"".join(lines))
            writelines(lines)

        transport.write, transport.writelines = spy_write, spy_writelines  # type: ignore[method-assign]
        stream = EventStream(
            request, headers={REQUEST_ID: "abc"}, send_timeout=5, hold_headers=True
        )
        await stream.open()
        await stream.send(b"data: first\n\n")
        await stream.send(b"data: second\n\n")
        await stream.close()
        return stream.response

    client = await serve(aiohttp_client, handler)
    async with client.get("/") as response:
        assert response.headers["X-Request-ID"] == "abc"
        assert await response.read() == b"data: first\n\ndata: second\n\n"
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert writes[0].endswith(b"\r\n\r\nd\r\ndata: first\n\n\r\n")
    assert b"data: second" in writes[1]


async def test_a_stream_not_holding_its_headers_sends_them_at_open(
    aiohttp_client: AiohttpClient,
) -> None:
    """Regression (a resumed reader waiting for the live reply got no status until
    its first event): only the relay, whose first event follows at once, holds them."""
    opened = asyncio.Event()
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        stream = EventStream(request, headers={REQUEST_ID: "abc"}, send_timeout=5)
        await stream.open()
        opened.set()
        await release.wait()
        await stream.send(b"data: late\n\n")
        await stream.close()
        return stream.response

    client = await serve(aiohttp_client, handler)
    request = asyncio.ensure_future(client.get("/"))
    await opened.wait()
    response = await asyncio.wait_for(request, 5)  # the status, before any event
    assert response.status == 200
    assert response.headers["X-Request-ID"] == "abc"
    release.set()
    assert await response.read() == b"data: late\n\n"
    response.release()
