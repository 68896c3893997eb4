"""A deadline for receiving a request's headers (the slow-loris guard).

aiohttp waits for request headers as long as a connection stays open, so a client
that sends one header byte at a time can hold a connection for ever. This server
arms a timer when a connection opens, and disarms it when a request's headers are
complete (the moment aiohttp builds the request object). When it fires, the client
gets a 408 with an OpenAI error body and the connection is closed. The body has
its own deadline, in the handler.

After a request, the same timer is re-armed with the (longer) keep-alive timeout,
and then closes the connection silently: it may simply be idle. When the next
request's first bytes arrive, the header deadline applies again (a slow-loris on
a kept-alive connection gets its 408 too). That timeout is
above common load balancers' idle timeouts (AWS ALB: 60 s), which must be shorter
than the server's so they never send a request on a connection being closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import RequestTimeout
from gateway.observability.log_throttle import LogThrottle
from gateway.server.aiohttp_internals import (
    RequestHandler,
    new_request_handler,
    protocol_of_request_factory_call,
    server_settings,
)
from gateway.server.bad_requests import GatewayRequestHandler


def _timeout_response(seconds: float) -> bytes:
    body = orjson.dumps(
        RequestTimeout(f"The request headers did not arrive within {seconds:g} s.").body()
    )
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedServer(web.Server):
    """``web.Server`` with a per-connection deadline for request headers."""

    def __init__(self, handler: Any, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._header_timeout = header_timeout
        # aiohttp's own keep-alive timer stays too; this one also covers partial data.
        self._keepalive_timeout: float = kwargs.get("keepalive_timeout", 75.0)
        self._expired = _timeout_response(header_timeout)
        self._guards: dict[RequestHandler, asyncio.TimerHandle] = {}
        #: Connections whose timer is the keep-alive one (between requests).
        self._idle: set[RequestHandler] = set()
        self._throttle = LogThrottle()
        inner_factory = self.request_factory

        def factory(*args: Any, **kw: Any) -> web.BaseRequest:
            protocol = protocol_of_request_factory_call(args, kw)
            self._disarm(protocol)  # the headers are complete
            return inner_factory(*args, **kw)

        self.request_factory = factory

    def __call__(self) -> RequestHandler:
        protocol = new_request_handler(self, GatewayRequestHandler)
        assert isinstance(protocol, GatewayRequestHandler)
        protocol.on_data = self._data_arrived
        # Re-armed from the protocol, not by wrapping the handler: no coroutine frame
        # more for every open stream to hold (about 0.3 KB).
        protocol.on_response_done = self._response_done
        protocol.throttle = self._throttle
        return protocol

    def _response_done(self, protocol: RequestHandler) -> None:
        self._arm(protocol, idle=True)  # the keep-alive wait until the next request

    def _data_arrived(self, protocol: RequestHandler) -> None:
        if protocol in self._idle:  # the next request begins: its headers have a deadline
            self._arm(protocol)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._arm(handler)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self._disarm(handler)
        super().connection_lost(handler, exc)

    def _arm(self, protocol: RequestHandler, *, idle: bool = False) -> None:
        self._disarm(protocol)
        if protocol.transport is None or protocol.transport.is_closing():
            return
        loop = asyncio.get_running_loop()
        delay = self._keepalive_timeout if idle else self._header_timeout
        self._guards[protocol] = loop.call_later(delay, self._expire, protocol, idle)
        if idle:
            self._idle.add(protocol)

    def _disarm(self, protocol: RequestHandler) -> None:
        self._idle.discard(protocol)
        guard = self._guards.pop(protocol, None)
        if guard is not None:
            guard.cancel()

    def _expire(self, protocol: RequestHandler, idle: bool) -> None:
        self._guards.pop(protocol, None)
        self._idle.discard(protocol)
        transport = protocol.transport
        if transport is not None and not transport.is_closing():
            if not idle:
                transport.write(self._expired)
            transport.close()


class GuardedAppRunner(web.AppRunner):
    """``web.AppRunner`` whose server has the header deadline."""

    def __init__(
        self,
        app: web.Application,
        *,
        header_timeout: float,
        keepalive_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, keepalive_timeout=keepalive_timeout, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The same server, rebuilt as a GuardedServer: same handler, factory and the
        # runner's keyword settings (aiohttp keeps those in ``_kwargs``).
        return GuardedServer(
            server.request_handler,
            header_timeout=self._header_timeout,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            **server_settings(server),
        )
