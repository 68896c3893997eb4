"""The reply log in process memory: resume works against the process that produced it.

A log is a list the producer appends to; a reader waiting for more holds a future
the next append resolves, so with no reader attached an append is a list append
and one truth test. An ended log is dropped ``ttl`` seconds later.

A token is kept as its text, a ``str``, not as the provider's ``TextDelta``: a str
is not tracked by the garbage collector, and the logs of ``ttl`` seconds of traffic
hold every token (at 10,000 tokens/s, millions of them), which the collector would
otherwise walk, again and again (measured: 2-3 us of collection per token relayed).
Readers get ``TextDelta`` back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable

from gateway.streaming.replylog import Ended, LogEntry, ReplyMeta
from providers.events import TextDelta

#: A log entry as kept: a token's text, or the entry itself.
_Kept = str | LogEntry


def _entries(kept: list[_Kept]) -> list[LogEntry]:
    return [TextDelta(e) if type(e) is str else e for e in kept]  # type: ignore[misc]


class MemoryReplyLog:
    """One reply's log; the producer's and every reader's handle at once."""

    __slots__ = ("_on_end", "_waiters", "entries", "meta", "on_cancel", "readers")

    def __init__(self, meta: ReplyMeta, on_end: Callable[[MemoryReplyLog], None]) -> None:
        self.meta = meta
        self.entries: list[_Kept] = []
        self.on_cancel: Callable[[], None] | None = None
        #: Resumed readers attached now.
        self.readers = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._on_end = on_end

    def append(self, entry: LogEntry) -> None:
        """See ``ReplyLog.append``."""
        self.entries.append(entry.text if type(entry) is TextDelta else entry)
        if self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()
        if type(entry) is Ended:
            self.on_cancel = None
            self._on_end(self)

    def attached(self) -> bool:
        """See ``ReplyLog.attached``."""
        return self.readers > 0

    @property
    def ended(self) -> bool:
        return bool(self.entries) and type(self.entries[-1]) is Ended

    async def snapshot(self) -> list[LogEntry]:
        """See ``ReplyView.snapshot``."""
        return _entries(self.entries)

    async def follow(self, heartbeat: float) -> AsyncGenerator[list[LogEntry], None]:
        """See ``ReplyView.follow``."""
        position = 0
        loop = asyncio.get_running_loop()
        self.readers += 1
        try:
            yield _entries(self.entries)  # the catch-up, at once (maybe nothing yet)
            position = len(self.entries)
            if self.ended:
                return
            while True:
                entries = self.entries
                if position < len(entries):
                    batch = _entries(entries[position:])
                    position = len(entries)
                    yield batch
                    if type(batch[-1]) is Ended:
                        return
                    continue
                waiter = loop.create_future()
                self._waiters.append(waiter)
                try:
                    async with asyncio.timeout(heartbeat):
                        await waiter
                except TimeoutError:
                    yield []
        finally:
            self.readers -= 1


class MemoryReplyLogStore:
    """Every reply log of this process, each kept ``ttl`` seconds after its end."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._logs: dict[str, MemoryReplyLog] = {}
        self._expiries: dict[str, asyncio.TimerHandle] = {}

    async def create(self, meta: ReplyMeta) -> MemoryReplyLog:
        """See ``ReplyLogStore.create``."""
        log = MemoryReplyLog(meta, self._ended)
        self._logs[meta.reply_id] = log
        return log

    def _ended(self, log: MemoryReplyLog) -> None:
        reply_id = log.meta.reply_id
        loop = asyncio.get_running_loop()
        self._expiries[reply_id] = loop.call_later(self._ttl, self._expire, reply_id)

    def _expire(self, reply_id: str) -> None:
        self._logs.pop(reply_id, None)
        self._expiries.pop(reply_id, None)

    async def find(self, reply_id: str) -> MemoryReplyLog | None:
        """See ``ReplyLogStore.find``."""
        return self._logs.get(reply_id)

    async def cancel(self, reply_id: str) -> None:
        """See ``ReplyLogStore.cancel``."""
        log = self._logs.get(reply_id)
        if log is not None and log.on_cancel is not None:
            log.on_cancel()

    async def aclose(self) -> None:
        """Forget every log."""
        for handle in self._expiries.values():
            with contextlib.suppress(Exception):
                handle.cancel()
        self._expiries.clear()
        self._logs.clear()
