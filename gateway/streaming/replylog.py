"""The reply log: one reply's events, in order, which every response to it reads.

Generation is decoupled from delivery. A reply's producer
(:class:`~gateway.streaming.relay.StreamSession`) appends each provider event to
the reply's log; each HTTP response is a reader of that log, the creating one
written directly by the producer (the fast path: no queue, no extra task per
token), a resumed one catching up and then following it live.

The log holds what re-encoding needs, not framed bytes: token texts, tool-call
deltas, the finish, and one :class:`Ended` (usage counts, or the in-band error).
Each reader encodes with a fresh encoder of the reply's dialect, rebuilt from the
request body kept in :class:`ReplyMeta`, through a :class:`Sequencer`, so the
SSE ``id`` of every event is the same number for every reader: the events of the
stream counted from the encoder's ``first_id`` (the opening frames included): from
1, or from 0 in the Responses API, where the ``id`` is the ``sequence_number``.

Memory per reply: the request body (at most ``max_body_bytes``) and one entry per
event (bounded by the reply's token limit), kept ``resume_ttl_seconds`` after the
reply ended. Implementations: :mod:`~gateway.streaming.replylog_memory` (one
process) and :mod:`~gateway.streaming.replylog_redis` (shared by replicas).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.dialects.base import Completed, Encoder
from gateway.errors import GatewayError
from gateway.streaming import framer
from providers.events import Finish, FinishReason, TextDelta, ToolCallDelta


@dataclass(frozen=True, slots=True)
class Ended:
    """The last entry of every log: how the reply ended."""

    #: (prompt, completion) tokens of a complete reply.
    usage: tuple[int, int] | None = None
    #: The ``error`` object of the in-band error of a reply that did not complete.
    error: dict[str, Any] | None = None
    #: Not in the log: a reader found the producer gone (``reply_lost``). The reader
    #: may be past the log's last entry (see :meth:`Sequencer.frames`).
    lost: bool = False


LogEntry = TextDelta | ToolCallDelta | Finish | Ended


@dataclass(frozen=True, slots=True)
class ReplyMeta:
    """What a reader needs besides the events: how to rebuild the encoder, who may read."""

    reply_id: str
    #: The dialect's name and the request body, to rebuild the reply's encoder.
    dialect: str
    body: bytes
    created: int
    #: The per-reply read token (``X-Resume-Token``).
    token: str
    #: The creating API key's name, when admission knew one.
    key: str | None = None
    background: bool = False


def new_reply_id(prefix: str = "chatcmpl-") -> str:
    """An unguessable reply id: 128 random bits."""
    return prefix + secrets.token_urlsafe(16)


def new_token() -> str:
    """A per-reply read token: 128 random bits."""
    return secrets.token_urlsafe(16)


def error_of(body: dict[str, Any]) -> GatewayError:
    """A :class:`GatewayError` back from its stored ``error`` object."""
    exc = GatewayError(str(body.get("message", "")), param=body.get("param"), code=body.get("code"))
    exc.type = str(body.get("type", "server_error"))
    return exc


class ReplyLog(Protocol):
    """The producer's handle on one reply's log."""

    meta: ReplyMeta
    #: Set by the producer: stops the reply (``POST .../cancel``).
    on_cancel: Callable[[], None] | None

    def append(self, entry: LogEntry) -> None:
        """Add one event; never blocks (implementations batch their writes)."""
        ...

    def attached(self) -> bool:
        """Whether a resumed reader is attached now (the detach grace asks)."""
        ...


class UnloggedReply:
    """The log of a reply that is not resumable (``resumable: false``): keeps nothing."""

    __slots__ = ("meta", "on_cancel")

    def __init__(self, meta: ReplyMeta) -> None:
        self.meta = meta
        self.on_cancel: Callable[[], None] | None = None

    def append(self, entry: LogEntry) -> None:
        return None

    def attached(self) -> bool:
        return False


class ReplyView(Protocol):
    """A reader's handle on one reply's log."""

    meta: ReplyMeta

    async def snapshot(self) -> list[LogEntry]:
        """Every entry so far."""
        ...

    def follow(self, heartbeat: float) -> AsyncGenerator[list[LogEntry], None]:
        """The entries from the first, in batches, until (and with) :class:`Ended`.

        The first batch comes at once: what the log holds now (maybe nothing). Then
        yields ``[]`` when nothing came for ``heartbeat`` seconds (the reader pings).
        A reply whose producer is gone ends with an ``Ended`` carrying ``reply_lost``.
        """
        ...


class ReplyLogStore(Protocol):
    """Every reply log of the gateway (or of every replica sharing it)."""

    async def create(self, meta: ReplyMeta) -> ReplyLog:
        """A new, empty log."""
        ...

    async def find(self, reply_id: str) -> ReplyView | None:
        """The log of ``reply_id``; None when unknown or expired."""
        ...

    async def cancel(self, reply_id: str) -> None:
        """Ask the producer of ``reply_id`` (on whichever replica) to stop."""
        ...

    async def aclose(self) -> None:
        """Release connections and timers."""
        ...


class Sequencer:
    """Log entries -> one reader's framed events, numbered with their ``id``.

    The producer and every reader number the same events alike: the opening frames
    come before the first event, each event's frames follow, :class:`Ended` gives the
    end (usage and terminal frame) or the error. The first event is numbered
    ``encoder.first_id``. Events numbered ``after`` or lower are dropped (the reader
    had them; None: it has none); the first event sent carries ``retry``.
    """

    __slots__ = ("_ids", "_plain", "_retry", "after", "encoder", "seq", "started")

    def __init__(
        self,
        encoder: Encoder,
        *,
        after: int | None = None,
        retry_ms: int | None = None,
        ids: bool = True,
    ) -> None:
        self.encoder = encoder
        #: The number of the last event numbered.
        self.seq = encoder.first_id - 1
        self.after = self.seq if after is None else after
        self.started = False
        self._retry = retry_ms if ids else None
        #: False: frames pass unnumbered (``resumable: false``).
        self._ids = ids
        #: Numbering is just the next ``id``: ids on, ``retry`` sent, nothing to drop.
        self._plain = False

    def number(self, frames: bytes) -> bytes:
        """Number the events in ``frames`` (the next ones of the stream)."""
        if not self._ids:
            return frames
        out, self.seq = framer.with_ids(frames, self.seq, self.after)
        if out and self._retry is not None:
            out = framer.with_retry(out, self._retry)
            self._retry = None
        self._plain = self._retry is None and self.after <= self.seq
        return out

    def one(self, frames: bytes) -> bytes:
        """:meth:`number` for a token's frames: the hot path, for the common case of
        one event (a dialect may open an item with the first token: then in general)."""
        if self._plain and frames.count(framer.END) == 1:
            self.seq = seq = self.seq + 1
            return b"id: %d\n%b" % (seq, frames)
        return self.number(frames)

    def start(self) -> bytes:
        """The opening frames (once)."""
        self.started = True
        return self.number(self.encoder.start())

    def frames(self, entry: LogEntry) -> bytes:
        """The numbered frames of one log entry."""
        encoder = self.encoder
        if type(entry) is Ended:
            if entry.lost:
                # A reader can be past the log's last entry: the dead producer wrote
                # to its client before its log append landed. The reply_lost error
                # still reaches it, numbered after what it saw (else its resumed
                # stream is an empty 200). A logged end keeps its number: a reader
                # that saw it gets nothing more (204), as before.
                self.seq = max(self.seq, self.after)
            if entry.error is not None:
                return self.number(encoder.error(error_of(entry.error)))
            usage = entry.usage or (0, 0)
            return self.number(encoder.end(lambda: usage))
        head = b"" if self.started else self.start()
        if type(entry) is TextDelta:
            return head + self.number(encoder.text(entry.text))
        if type(entry) is ToolCallDelta:
            return head + self.number(encoder.tool_call(entry))
        assert type(entry) is Finish
        return head + self.number(encoder.finish(entry.reason))


def completed_of(reply_id: str, created: int, model: str, entries: list[LogEntry]) -> Completed:
    """The whole reply of a log that ended complete, for a non-streaming answer."""
    texts: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish: FinishReason = "stop"
    usage = (0, 0)
    for entry in entries:
        if type(entry) is TextDelta:
            texts.append(entry.text)
        elif type(entry) is ToolCallDelta:
            call = calls.setdefault(
                entry.index,
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
            )
            if entry.id is not None:
                call["id"] = entry.id
            if entry.name is not None:
                call["function"]["name"] = entry.name
            call["function"]["arguments"] += entry.arguments
        elif type(entry) is Finish:
            finish = entry.reason
        elif type(entry) is Ended and entry.usage is not None:
            usage = entry.usage
    return Completed(
        id=reply_id,
        created=created,
        model=model,
        text="".join(texts),
        tool_calls=[calls[i] for i in sorted(calls)],
        finish=finish,
        prompt_tokens=usage[0],
        completion_tokens=usage[1],
    )
