"""The SSE response writer: headers, backpressure with a send timeout, keep-alives,
and the stream's single terminal event.

Framing is :mod:`gateway.streaming.framer`'s; this module only moves framed bytes to the socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import hdrs, web
from multidict import istr

from gateway.streaming import framer as sse

# Header names are ``istr`` here and wherever a streamed response's headers are made:
# a response's CIMultiDict keeps a lower-cased copy of every plain ``str`` name, and
# writing the headers adds more; an ``istr`` brings its own. About 100 bytes per
# header for every open stream (tracemalloc, 1,000 held streams).
SSE_HEADERS: dict[str, str] = {
    hdrs.CONTENT_TYPE: "text/event-stream; charset=utf-8",
    hdrs.CACHE_CONTROL: "no-cache",
    # nginx: pass each event on at once even with ``proxy_buffering on``.
    istr("X-Accel-Buffering"): "no",
}


class _EventResponse(web.StreamResponse):
    """A streamed response whose status line and headers leave with its first event.

    ``StreamResponse.prepare()`` sends the headers at once, in a write of their own
    (``web.Response`` waits for its body: aiohttp's ``_send_headers_immediately``);
    the relay prepares right before the first event, so the two writes were one
    system call apart on the time to first token (tests/test_third_party_internals.py
    checks the attribute still decides it). Only for a caller whose first event
    follows ``open()`` at once: until then the client has no status at all.
    """

    _send_headers_immediately = False


class ClientGone(Exception):
    """The client closed the connection."""


class SendTimeout(Exception):
    """The client accepted no bytes for ``send_timeout`` seconds."""


class EventStream:
    """Writes framed SSE bytes to one ``web.StreamResponse``.

    aiohttp sends the status line and the headers (with the first event, in one
    write, when ``hold_headers``); later events go to the transport directly, framed
    as HTTP/1.1 chunks here (raw for HTTP/1.0, which has no chunking). That skips
    three coroutine layers of aiohttp's writer per token, about a quarter of the
    gateway's CPU per relayed token. The body's end is aiohttp's again
    (``write_eof``).

    When bytes are queued in the transport (a slow reader), a write waits for it to
    drain below its high-water mark, at most ``send_timeout`` seconds: that bounds
    what one stream buffers.
    """

    __slots__ = (
        "_chunked",
        "_flush_handle",
        "_late_headers",
        "_loop",
        "_opening",
        "_pending",
        "_raw",
        "_request",
        "_response",
        "_send_timeout",
        "_transport",
        "last_write",
        "opened",
    )

    def __init__(
        self,
        request: web.Request,
        *,
        headers: dict[str, str],
        send_timeout: float,
        hold_headers: bool = False,
        late_headers: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self._request = request
        #: More headers, made at :meth:`open` (a stream's rate-limit headers).
        self._late_headers = late_headers
        # ``hold_headers``: the caller opens right before its first event (the relay),
        # so both leave in one write; else (a resumed reader or the dashboard, which
        # may wait a while for their first event) the headers go at ``open()``.
        kind = _EventResponse if hold_headers else web.StreamResponse
        self._response = kind(status=200, headers={**SSE_HEADERS, **headers})
        self._send_timeout = send_timeout
        self._loop = asyncio.get_running_loop()
        self._transport = request.transport
        self._opening: asyncio.Future[None] | None = None
        self._raw = False  # after the first event: write to the transport directly
        self._chunked = True
        #: Events written in this turn of the event loop, sent together at its end.
        self._pending: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self.opened = False
        #: Loop time of the last write, for keep-alives.
        self.last_write = 0.0

    @property
    def response(self) -> web.StreamResponse:
        return self._response

    async def open(self) -> None:
        """Send the status line and headers (once; a ping and the first event may race)."""
        if self.opened:
            if self._opening is not None:  # still opening: a ping and the first event
                await asyncio.shield(self._opening)
            return
        self._opening = self._loop.create_future()
        self.opened = True
        self.last_write = self._loop.time()
        late, self._late_headers = self._late_headers, None
        if late is not None:
            self._response.headers.update(late())
        try:
            await self._response.prepare(self._request)
        except (ConnectionResetError, RuntimeError) as exc:
            self._opening.set_exception(ClientGone())
            self._opening.exception()  # retrieved: the other waiters re-raise it
            raise ClientGone() from exc
        self._opening.set_result(None)
        self._opening = None  # done: ``opened`` says so
        headers = self._response.headers
        self._chunked = headers.get(hdrs.TRANSFER_ENCODING, "").lower() == "chunked"
        # Serialized and on their way: nothing reads a streamed response's headers
        # again (the gateway middleware checks ``prepared``), so an open stream does
        # not hold them (about 1 KB with the rate-limit headers).
        headers.clear()
        self.last_write = self._loop.time()

    async def send(self, frame: bytes) -> None:
        """Write one framed event, waiting for the socket when a backlog exists."""
        if self._raw:
            if self.write(frame):
                await self.drain()
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ClientGone()
        try:
            # aiohttp may hold the headers back until the first body write.
            await self._response.write(frame)
        except ConnectionError as exc:
            raise ClientGone() from exc
        self._raw = True
        self.last_write = self._loop.time()
        if transport.get_write_buffer_size():
            await self.drain()

    def write(self, frame: bytes) -> bool:
        """:meth:`send` without a coroutine, for every event after the first (the
        per-token path): queue ``frame``; True when the socket has a backlog, and
        the caller must ``await drain()`` before the next."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ClientGone()
        self._pending.append(frame)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self.flush)
        return transport.get_write_buffer_size() > 0

    async def drain(self) -> None:
        """Send what is queued, then wait while the transport is above its high-water
        mark, at most ``send_timeout`` seconds."""
        self.flush()
        try:
            async with asyncio.timeout(self._send_timeout):
                await self._request.writer.drain()
        except TimeoutError:
            raise SendTimeout() from None
        except ConnectionError as exc:
            raise ClientGone() from exc

    def flush(self) -> None:
        """Send the events written so far: one chunk, one system call.

        Called at the end of the event loop's turn, so a burst of events that came in
        one upstream read leaves in one write, while a lone event leaves as soon as
        the task that wrote it yields.
        """
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        self.last_write = self._loop.time()

    async def ping(self) -> None:
        """A keep-alive comment; opens the stream when nothing was sent yet."""
        await self.open()
        await self.send(sse.PING)

    async def close(self) -> None:
        """End the HTTP response (the last chunk of the chunked body)."""
        self.flush()
        transport = self._request.transport
        if transport is None or transport.is_closing():
            return
        try:
            if not transport.get_write_buffer_size():  # nothing queued: it cannot wait
                await self._response.write_eof()
                return
            async with asyncio.timeout(self._send_timeout):
                await self._response.write_eof()
        except (TimeoutError, ConnectionError):
            pass
