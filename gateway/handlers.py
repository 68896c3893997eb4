"""HTTP handlers of the OpenAI-compatible API."""

from __future__ import annotations

import asyncio
import os

import structlog
from aiohttp import web

from gateway.collect import collect
from gateway.errors import BadRequest, Overloaded, PayloadTooLarge, RequestTimeout, ShuttingDown
from gateway.middleware import REQUEST_ID, REQUEST_ID_KEY, json_response
from gateway.relay import StreamSession
from gateway.reply import Reply
from gateway.schema import model_list, parse_request
from gateway.state import STATE

log = structlog.get_logger("tokenpipe.http")


async def _read_body(request: web.Request, limit: int, seconds: float) -> bytes:
    """The body, refusing one over ``limit`` before reading it whole, or too slow."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"The request body is {request.content_length} bytes; the limit is {limit}."
        )
    try:
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


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``, streaming or not."""
    state = request.app[STATE]
    settings = state.settings
    body = await _read_body(request, settings.max_body_bytes, settings.request_read_timeout_seconds)
    chat = parse_request(body)
    routes = state.registry.resolve(chat.model)
    structlog.contextvars.bind_contextvars(model=chat.model, stream=chat.stream)
    if state.draining:
        log.info("stream_finished", reason="rejected", detail="draining")
        raise ShuttingDown(
            "The gateway is shutting down; retry the request.", headers={"Retry-After": "1"}
        )
    if settings.max_streams and state.active >= settings.max_streams:
        log.info("stream_finished", reason="rejected", detail="max_streams")
        raise Overloaded(
            f"The gateway is at its limit of {settings.max_streams} concurrent streams; "
            "retry shortly.",
            headers={"Retry-After": "1"},
        )
    reply = Reply(
        request=chat,
        routes=routes,
        request_id=request[REQUEST_ID_KEY],
        tokenizer=state.tokenizer,
    )
    state.enter()
    try:
        if chat.stream:
            session = StreamSession(
                request,
                reply,
                heartbeat=settings.heartbeat_seconds,
                send_timeout=settings.send_timeout_seconds,
                headers={REQUEST_ID: request[REQUEST_ID_KEY]},
                inflight=state.inflight,
            )
            return await session.run()
        return json_response(await collect(reply, state.inflight))
    finally:
        state.leave()


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``."""
    state = request.app[STATE]
    return json_response(model_list(state.registry.names(), state.started_at))


async def get_model(request: web.Request) -> web.Response:
    """``GET /v1/models/{model}``."""
    name = request.match_info["model"]
    registry = request.app[STATE].registry
    registry.resolve(name)  # raises NotFound
    return json_response(model_list([name], request.app[STATE].started_at)["data"][0])


async def healthz(request: web.Request) -> web.Response:
    """Liveness and readiness: 503 while draining, so load balancers move on."""
    state = request.app[STATE]
    body = {
        "status": "draining" if state.draining else "ok",
        "active_streams": state.active,
        "pid": os.getpid(),
    }
    return json_response(body, status=503 if state.draining else 200)
