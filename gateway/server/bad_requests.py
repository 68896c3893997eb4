"""Malformed HTTP: answered in the OpenAI error shape, logged as one JSON line.

aiohttp answers a request its parser rejects (bad request line, bad header, bad
chunking, ...) through ``RequestHandler.handle_error``, with a ``text/plain`` body
and an 11-line traceback in its ``aiohttp.server`` log: a log flood anyone can
cause. :class:`GatewayRequestHandler` answers a JSON 400 (or the parser's status)
instead, and logs one ``http_malformed`` event with the reason and the client's
address, rate-limited per reason (:class:`LogThrottle`). Its other error logs
(``log_exception``) become one line too, without a traceback.

It also tells the server when bytes arrive (``data_received``), so the header
deadline applies to every request of a kept-alive connection, not only the first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.web_request import BaseRequest

from gateway.errors import BadRequest, GatewayError
from gateway.observability.log_throttle import LogThrottle
from gateway.server.aiohttp_internals import RequestHandler

log = structlog.get_logger("tokenpipe.server")


def _reason(exc: BaseException | None, message: str | None) -> str:
    if exc is None:
        return (message or "unknown")[:200]
    text = getattr(exc, "message", None) or str(exc)
    return f"{type(exc).__name__}: {str(text).splitlines()[0] if text else ''}"[:200]


class GatewayRequestHandler(RequestHandler):
    """aiohttp's connection protocol with the gateway's error answers and logs."""

    #: Set by the server: called with this protocol whenever bytes arrive.
    on_data: Callable[[RequestHandler], None] | None = None
    throttle: LogThrottle | None = None

    #: Set by the server: called with this protocol once each response is written
    #: (aiohttp logs the access then, whatever the handler did).
    on_response_done: Callable[[RequestHandler], None] | None = None

    def data_received(self, data: bytes) -> None:
        if self.on_data is not None:
            self.on_data(self)
        super().data_received(data)

    def log_access(
        self, request: BaseRequest, response: web.StreamResponse, time: float | None
    ) -> None:
        if self.on_response_done is not None:
            self.on_response_done(self)
        super().log_access(request, response, time)

    def _log_once(self, event: str, key: str, **fields: Any) -> None:
        throttle = self.throttle
        allowed, suppressed = throttle.admit(key) if throttle else (True, 0)
        if allowed:
            extra = {"suppressed": suppressed} if suppressed else {}
            log.warning(event, **fields, **extra)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        reason = _reason(exc, message)
        client = request.remote
        if status >= 500:
            self._log_once("request_failed", reason, reason=reason, client=client, status=status)
            error: GatewayError = GatewayError("The gateway failed to handle the request.")
        else:
            self._log_once("http_malformed", reason, reason=reason, client=client, status=status)
            error = BadRequest(f"Malformed HTTP request: {reason}", code="invalid_http")
            error.status = status
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response")
        response = web.Response(
            status=status,
            body=orjson.dumps(error.body()),
            content_type="application/json",
            charset="utf-8",
        )
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        what = str(args[0]) if args else "error"
        reason = _reason(exc if isinstance(exc, BaseException) else None, what)
        self._log_once("http_error", reason, reason=reason, detail=what[:200])
