"""The SSE response writer: headers, backpressure with a send timeout, keep-alives,
and the stream's single terminal event.

Framing is :mod:`gateway.sse`'s; this module only moves framed bytes to the socket.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway import sse

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    # nginx: pass each event on at once even with ``proxy_buffering on``.
    "X-Accel-Buffering": "no",
}


class ClientGone(Exception):
    """The client closed the connection."""


class SendTimeout(Exception):
    """The client accepted no bytes for ``send_timeout`` seconds."""


class EventStream:
    """Writes framed SSE bytes to one ``web.StreamResponse``.

    Writes go straight to the transport while it keeps up; when bytes are queued
    (a slow reader), the write waits for the socket to drain, at most
    ``send_timeout`` seconds. The transport's own high-water mark bounds what one
    stream buffers.
    """

    __slots__ = (
        "_loop",
        "_opening",
        "_request",
        "_response",
        "_send_timeout",
        "_transport",
        "last_write",
        "opened",
    )

    def __init__(
        self, request: web.Request, *, headers: dict[str, str], send_timeout: float
    ) -> None:
        self._request = request
        self._response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **headers})
        self._send_timeout = send_timeout
        self._loop = asyncio.get_running_loop()
        self._transport = request.transport
        self._opening: asyncio.Future[None] | None = None
        self.opened = False
        #: Loop time of the last write, for keep-alives.
        self.last_write = 0.0

    @property
    def response(self) -> web.StreamResponse:
        return self._response

    async def open(self) -> None:
        """Send the status line and headers (once; a ping and the first event may race)."""
        if self._opening is not None:
            await asyncio.shield(self._opening)
            return
        self._opening = self._loop.create_future()
        self.opened = True
        try:
            await self._response.prepare(self._request)
        except (ConnectionResetError, RuntimeError) as exc:
            self._opening.set_exception(ClientGone())
            self._opening.exception()  # retrieved: the other waiters re-raise it
            raise ClientGone() from exc
        self._opening.set_result(None)
        self.last_write = self._loop.time()

    async def send(self, frame: bytes) -> None:
        """Write one framed event, waiting for the socket when a backlog exists."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ClientGone()
        try:
            if transport.get_write_buffer_size():
                async with asyncio.timeout(self._send_timeout):
                    await self._response.write(frame)
            else:
                await self._response.write(frame)
        except TimeoutError:
            raise SendTimeout() from None
        except ConnectionError as exc:
            raise ClientGone() from exc
        self.last_write = self._loop.time()

    async def ping(self) -> None:
        """A keep-alive comment; opens the stream when nothing was sent yet."""
        await self.open()
        await self.send(sse.PING)

    async def close(self) -> None:
        """End the HTTP response (the last chunk of the chunked body)."""
        transport = self._request.transport
        if transport is None or transport.is_closing():
            return
        try:
            async with asyncio.timeout(self._send_timeout):
                await self._response.write_eof()
        except (TimeoutError, ConnectionError):
            pass
