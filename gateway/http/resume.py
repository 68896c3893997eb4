"""Reading a reply again: ``GET /v1/chat/completions/{id}`` and ``POST .../{id}/cancel``.

Each response here is a reader of the reply's log (:mod:`gateway.streaming.replylog`):

* ``?stream=true`` with ``Last-Event-ID: N`` (or ``&starting_after=N``): every event
  whose SSE ``id`` is above N, then the live reply, ending as the original does. A
  reply that ended with nothing after N: 204, which also stops an ``EventSource``
  reconnecting. (In the Responses API the ``id`` is the ``sequence_number``, so N
  is both: see :mod:`gateway.http.resume_responses`, the door of its own shapes.)
* without ``stream``: the finished completion, or ``{"status": "in_progress"}``.
* ``cancel``: stops the producer (on whichever replica); readers get one in-band
  error with code ``cancelled``.

The read token of the reply (``X-Resume-Token``, or ``?token=`` for an
``EventSource``, which can set no header) is required, or, with keys on, the
creating key itself; any other key is refused even with the token. An unknown id,
an expired one, a wrong token or another key's request are all 404, so nothing
tells which.
"""

from __future__ import annotations

import contextlib
import hmac

from aiohttp import web

from gateway.admission.keys import presented_key
from gateway.dialects.anthropic_messages import ANTHROPIC_MESSAGES
from gateway.dialects.base import Dialect, Encoder
from gateway.dialects.chat_completions import CHAT_COMPLETIONS
from gateway.dialects.responses import RESPONSES
from gateway.errors import BadRequest, NotFound
from gateway.http.middleware import DIALECT_KEY, REQUEST_ID, REQUEST_ID_KEY, json_response
from gateway.http.replies import RESUME_TOKEN
from gateway.state import STATE
from gateway.streaming.replylog import Ended, ReplyView, Sequencer, completed_of
from gateway.streaming.writer import ClientGone, EventStream, SendTimeout

#: The dialects whose replies can be read again, by name.
DIALECTS: dict[str, Dialect] = {
    d.name: d for d in (CHAT_COMPLETIONS, RESPONSES, ANTHROPIC_MESSAGES)
}


async def reply_view(request: web.Request, door: Dialect | None = None) -> ReplyView:
    """The reply's log, when it exists and the read token matches.

    ``door``: the dialect whose path was asked, which knows only its own replies (and
    answers errors in its shape); None: the chat completions door, which reads all.
    """
    request[DIALECT_KEY] = door or CHAT_COMPLETIONS
    reply_id = request.match_info["reply_id"]
    token = request.headers.get(RESUME_TOKEN) or request.query.get("token", "")
    state = request.app[STATE]
    view = await state.reply_logs.find(reply_id)
    allowed = view is not None and hmac.compare_digest(view.meta.token.encode(), token.encode())
    if view is not None and state.gate.enabled and presented_key(request.headers) is not None:
        # With keys on, a key other than the creator's never reads the reply; the
        # creator's key may, with or without the token.
        identity = state.gate.ring.authenticate(request.headers)
        allowed = identity is not None and identity.name == view.meta.key
    if view is not None and door is not None and view.meta.dialect != door.name:
        allowed = False
    if view is None or not allowed:
        raise NotFound(
            f"No reply '{reply_id}' (unknown, expired, or a wrong resume token).",
            code="reply_not_found",
        )
    return view


def _after(request: web.Request) -> int | None:
    """The id of the last event the reader has; None: it has none."""
    raw = request.headers.get("Last-Event-ID") or request.query.get("starting_after")
    if raw is None:
        return None
    try:
        after = int(raw)
    except ValueError:
        after = -1
    if after < 0:
        raise BadRequest(
            "Last-Event-ID / starting_after must be a non-negative integer.",
            param="starting_after",
            code="invalid_value",
        )
    return after


async def get_reply(request: web.Request) -> web.StreamResponse:
    """``GET /v1/chat/completions/{id}``: the reply, streamed from a position or whole."""
    view = await reply_view(request)
    meta = view.meta
    parsed = DIALECTS[meta.dialect].parse(meta.body)
    if wants_stream(request):
        return await stream_reply(request, view, parsed.encoder(meta.reply_id, meta.created))
    entries = await view.snapshot()
    status = {"id": meta.reply_id, "object": "chat.completion", "created": meta.created}
    if not entries or type(entries[-1]) is not Ended:
        return json_response(parsed.pending(meta.reply_id, meta.created))
    last = entries[-1]
    if last.error is not None:
        return json_response({**status, "status": "failed", "error": last.error})
    reply = completed_of(meta.reply_id, meta.created, parsed.inbound.model, entries)
    return json_response({**parsed.completion(reply), "status": "completed"})


def wants_stream(request: web.Request) -> bool:
    """``?stream=true``: the events, not the whole reply."""
    return request.query.get("stream", "").lower() in ("true", "1")


async def stream_reply(
    request: web.Request, view: ReplyView, encoder: Encoder
) -> web.StreamResponse:
    """The reply's events after the reader's position, then the live reply."""
    state = request.app[STATE]
    settings = state.settings
    sequencer = Sequencer(encoder, after=_after(request), retry_ms=settings.resume_retry_ms)
    headers: dict[str, str] = {REQUEST_ID: request[REQUEST_ID_KEY]}
    async with contextlib.aclosing(view.follow(settings.heartbeat_seconds)) as batches:
        first = await anext(batches)
        out = b"".join(sequencer.frames(entry) for entry in first)
        if not out and first and type(first[-1]) is Ended:
            return web.Response(status=204, headers=headers)
        stream = EventStream(request, headers=headers, send_timeout=settings.send_timeout_seconds)
        try:
            await stream.open()
            if out:
                await stream.send(out)
            async for batch in batches:
                if not batch:
                    await stream.ping()
                    continue
                out = b"".join(sequencer.frames(entry) for entry in batch)
                if out:
                    await stream.send(out)
        except (ClientGone, SendTimeout):
            return stream.response
        await stream.close()
        return stream.response


async def cancel_reply(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions/{id}/cancel``: stop the reply."""
    view = await reply_view(request)
    entries = await view.snapshot()
    status = "cancelled"
    if entries and type(entries[-1]) is Ended:
        status = "failed" if entries[-1].error is not None else "completed"
    else:
        await request.app[STATE].reply_logs.cancel(view.meta.reply_id)
    return json_response({"id": view.meta.reply_id, "object": "chat.completion", "status": status})
