"""What the gateway's middleware (:mod:`gateway.http.access_log`) does around every
handler: request ids and log context, the Host/CORS policy, and errors as OpenAI
error bodies."""

from __future__ import annotations

import os
import re

import orjson
import structlog
from aiohttp import web
from multidict import istr

from gateway.dialects.base import Dialect
from gateway.dialects.chat_completions import CHAT_COMPLETIONS
from gateway.errors import GatewayError, MethodNotAllowed, NotFound, PayloadTooLarge
from gateway.http.origin import ORIGIN_POLICY, screen
from gateway.observability.dashboard import DASHBOARD
from gateway.observability.metrics import METRICS

log = structlog.get_logger("tokenpipe.http")

REQUEST_ID = istr("X-Request-ID")  # istr: see gateway.streaming.writer.SSE_HEADERS
#: The request's id, in the request's storage.
REQUEST_ID_KEY = web.RequestKey("request_id", str)
#: The dialect a handler serves, so errors are rendered in its shape.
DIALECT_KEY = web.RequestKey("dialect", Dialect)
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_of(request: web.Request) -> str:
    """The client's ``X-Request-ID`` when it is sane, else a new one."""
    given = request.headers.get(REQUEST_ID, "")
    return given if _VALID_ID.fullmatch(given) else os.urandom(16).hex()


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response serialised with orjson."""
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def json_error(
    exc: GatewayError, request_id: str, dialect: Dialect = CHAT_COMPLETIONS
) -> web.Response:
    """An error before the stream started, in ``dialect``'s shape."""
    headers = {**exc.headers, REQUEST_ID: request_id}
    response = json_response(dialect.error_body(exc), exc.status, headers)
    if exc.close_connection:
        response.force_close()
    return response


def _from_http_exception(exc: web.HTTPException) -> GatewayError:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return MethodNotAllowed(
            f"Method {exc.method} is not allowed here; use {allowed}.",
            headers={"Allow": allowed},
        )
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("No such route.", code="not_found")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("The request body is too large.")
    error = GatewayError(exc.reason, code=None)
    error.status = exc.status
    error.type = "invalid_request_error" if exc.status < 500 else "server_error"
    return error


def begin(request: web.Request) -> web.StreamResponse | None:
    """Bind the request id (and a fresh log context), apply the Host/CORS policy
    (``gateway.http.origin``): its refusal or preflight answer, else None."""
    request_id = request_id_of(request)
    request[REQUEST_ID_KEY] = request_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    policy = request.app.get(ORIGIN_POLICY)
    return screen(policy, request) if policy is not None else None


def error_response(request: web.Request, exc: Exception) -> web.Response:
    """Every error as an OpenAI error body, never a traceback (call it while handling
    ``exc``); a redirect is re-raised."""
    request_id = request[REQUEST_ID_KEY]
    if isinstance(exc, GatewayError):
        return json_error(exc, request_id, request.get(DIALECT_KEY, CHAT_COMPLETIONS))
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return json_error(_from_http_exception(exc), request_id)
    log.exception("request_failed", path=request.path)
    error = GatewayError("The gateway failed to handle the request.")
    return json_error(error, request_id, request.get(DIALECT_KEY, CHAT_COMPLETIONS))


def with_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``X-Request-ID`` on a response not yet sent (a stream has it already)."""
    if not response.prepared:
        response.headers[REQUEST_ID] = request[REQUEST_ID_KEY]


class RequestCounter:
    """``tokenpipe_requests_total{endpoint, status}`` and the dashboard's requests/s,
    told by the access-log middleware (the outermost: it sees every answer, errors
    included; a request whose client left before its end counts as 499, nginx's
    "client closed request")."""

    __slots__ = ()

    def started(self, request: web.Request) -> str:
        """Count ``request`` for the dashboard; its endpoint, for :meth:`ended`."""
        resource = request.match_info.route.resource
        endpoint = resource.canonical if resource is not None else "other"
        if endpoint.startswith("/v1/"):
            request.app[DASHBOARD].stats.record_request()
        return endpoint

    def ended(self, request: web.Request, endpoint: str, status: int) -> None:
        request.app[METRICS].observe_request(endpoint, status)
