"""The reply endpoints: one handler per dialect, one path through the core.

A request is read and parsed by its dialect, admitted, routed, and then either
streamed (:class:`~gateway.streaming.relay.StreamSession`) or collected
(:func:`~gateway.streaming.collector.collect`). Nothing here knows a wire format.
A streamed or background reply gets a reply log (resumable, cancellable: see
``gateway.http.resume``) and a read token, ``X-Resume-Token``.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from gateway.dialects.base import Dialect
from gateway.dialects.chat_completions import CHAT_COMPLETIONS
from gateway.errors import Overloaded, ShuttingDown
from gateway.http.body import read_body
from gateway.http.middleware import DIALECT_KEY, REQUEST_ID, REQUEST_ID_KEY, json_response
from gateway.state import STATE
from gateway.streaming.collector import collect
from gateway.streaming.record import ReplyRecord
from gateway.streaming.relay import StreamSession
from gateway.streaming.replylog import ReplyMeta, new_reply_id, new_token

log = structlog.get_logger("tokenpipe.http")

#: The per-reply read token's header (also accepted as ``?token=``).
RESUME_TOKEN = "X-Resume-Token"


async def reply(request: web.Request, dialect: Dialect) -> web.StreamResponse:
    """Serve one reply in ``dialect``, streaming or not."""
    request[DIALECT_KEY] = dialect
    state = request.app[STATE]
    settings = state.settings
    body = await read_body(request, settings.max_body_bytes, settings.request_read_timeout_seconds)
    parsed = dialect.parse(body)
    inbound = parsed.inbound
    routes = state.registry.resolve(inbound.model)
    structlog.contextvars.bind_contextvars(model=inbound.model, stream=inbound.stream)
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
    request_id = request[REQUEST_ID_KEY]
    record = ReplyRecord(
        request=inbound,
        routes=routes,
        request_id=request_id,
        reply_id=new_reply_id(),
        tokenizer=state.tokenizer,
        dialect=dialect.name,
        operation=dialect.operation,
    )
    if not inbound.stream and not inbound.background:
        with state.track(record):
            return json_response(await collect(record, parsed))
    token = new_token()
    reply_log = await state.reply_logs.create(
        ReplyMeta(
            reply_id=record.reply_id,
            dialect=dialect.name,
            body=body,
            created=record.created,
            token=token,
            key=getattr(record, "key", None),
            background=inbound.background,
        )
    )
    headers = {REQUEST_ID: request_id, RESUME_TOKEN: token}
    session = StreamSession(
        request if inbound.stream else None,
        record,
        parsed.encoder(record.reply_id, record.created),
        reply_log=reply_log,
        heartbeat=settings.heartbeat_seconds,
        send_timeout=settings.send_timeout_seconds,
        headers=headers,
        track=state.track,
        retry_ms=settings.resume_retry_ms,
        background=inbound.background,
        detach_grace=settings.detach_grace_seconds,
    )
    if inbound.stream:
        return await session.run()
    session.start()
    return json_response(
        {
            "id": record.reply_id,
            "object": "chat.completion",
            "created": record.created,
            "model": inbound.model,
            "status": "in_progress",
        },
        headers=headers,
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    return await reply(request, CHAT_COMPLETIONS)
