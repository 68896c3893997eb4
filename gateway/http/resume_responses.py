"""Reading a Responses API reply again: ``GET /v1/responses/{id}`` and ``POST .../cancel``.

The Responses door of :mod:`gateway.http.resume`, in OpenAI's shapes: every answer
is the ``response`` object, and it knows only replies made by ``POST /v1/responses``
(any other id is 404, in OpenAI's error body).

* ``?stream=true&starting_after=N``: the events whose ``sequence_number`` is above N
  (the first one sent is N + 1), then the live reply. Each event's SSE ``id`` is
  its ``sequence_number``, so an ``EventSource``'s ``Last-Event-ID`` resumes at the
  same place; with both, ``Last-Event-ID`` wins. Nothing left after N: 204.
* without ``stream``: the ``response`` object as the reply's log tells it.
* ``cancel``: see :func:`cancel_response`.

The ``response`` object is rebuilt by replaying the log through the stream's own
encoder, so it is the one the stream's terminal event carries (or, while the reply
runs, the output so far).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from gateway.dialects.responses import RESPONSES
from gateway.errors import BadRequest
from gateway.http.middleware import json_response
from gateway.http.resume import reply_view, stream_reply, wants_stream
from gateway.state import STATE
from gateway.streaming.replylog import Ended, LogEntry, ReplyMeta, ReplyView, Sequencer

#: How long a cancel waits for the producer (maybe on another replica) to confirm it.
CANCEL_CONFIRM_SECONDS = 5.0


async def get_response(request: web.Request) -> web.StreamResponse:
    """``GET /v1/responses/{id}``: the response object, or its events after ``starting_after``."""
    view = await reply_view(request, RESPONSES)
    meta = view.meta
    if wants_stream(request):
        encoder = RESPONSES.parse(meta.body).encoder(meta.reply_id, meta.created)
        return await stream_reply(request, view, encoder)
    return json_response(response_of(meta, await view.snapshot()))


async def cancel_response(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses/{id}/cancel``: stop a background response, as OpenAI does.

    * A background response still running is stopped; the answer is the response
      object with ``"status": "cancelled"`` and the output made so far, the same
      object its readers' terminal event (``response.failed``) carries.
    * A background response that already ended is returned as it ended
      (``completed``, ``incomplete``, ``failed``, or ``cancelled``): cancelling is
      idempotent, as OpenAI's background guide says.
    * A response created without ``"background": true`` cannot be cancelled: 400,
      as OpenAI answers (``POST /v1/chat/completions/{id}/cancel`` still stops such
      a reply, in the chat completions shape).
    * An unknown id (expired, wrong token, or not a Responses reply): 404.
    """
    view = await reply_view(request, RESPONSES)
    meta = view.meta
    if not meta.background:
        raise BadRequest("Only responses created with 'background': true can be cancelled.")
    entries = await view.snapshot()
    if not _ended(entries):
        await request.app[STATE].reply_logs.cancel(meta.reply_id)
        entries = await _until_ended(view)
    response = response_of(meta, entries)
    if response["status"] == "in_progress":  # the producer did not confirm in time
        response = {**response, "status": "cancelled"}
    return json_response(response)


def response_of(meta: ReplyMeta, entries: list[LogEntry]) -> dict[str, Any]:
    """The ``response`` object of a Responses reply's log entries."""
    encoder = RESPONSES.parse(meta.body).encoder(meta.reply_id, meta.created)
    sequencer = Sequencer(encoder)
    for entry in entries:
        sequencer.frames(entry)
    return encoder.snapshot()


def _ended(entries: list[LogEntry]) -> bool:
    return bool(entries) and type(entries[-1]) is Ended


async def _until_ended(view: ReplyView) -> list[LogEntry]:
    """The log's entries once it ended, or as they are after the confirm time."""
    entries: list[LogEntry] = []
    with contextlib.suppress(TimeoutError):
        async with (
            asyncio.timeout(CANCEL_CONFIRM_SECONDS),
            contextlib.aclosing(view.follow(CANCEL_CONFIRM_SECONDS)) as batches,
        ):
            async for batch in batches:
                entries.extend(batch)
    return entries if _ended(entries) else await view.snapshot()
