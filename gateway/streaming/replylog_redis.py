"""The reply log in Redis: a reply produced on one replica can be read on any.

Per reply, three keys sharing the hash tag ``{<reply id>}``:

* ``meta``: a hash, :class:`~gateway.streaming.replylog.ReplyMeta` (request body included);
* ``log``: a Redis Stream; one entry per turn of the producer's event loop, holding
  that turn's events as one JSON array (``XADD``), so a fast stream costs one
  command per network read, not one per token;
* ``lease``: present while the producer lives; it renews it every
  :data:`RENEW_SECONDS` and it lapses :data:`LEASE_SECONDS` after the last renewal.

Readers catch up with ``XRANGE`` and follow with ``XREAD BLOCK``. A reader that
saw no entry for :data:`BLOCK_SECONDS` checks the lease: gone, with no end in the
log, means the producer died, and the reader ends with one ``reply_lost`` error.
So a reader learns of a dead producer within ``LEASE_SECONDS + BLOCK_SECONDS``
(4 s), never hangs. Every write is one Lua script (atomic; keys' expiry set with
it): the keys live ``ttl`` seconds after the reply's end, and ``ttl`` +
:data:`ORPHAN_GRACE_SECONDS` after the last renewal of a producer that died.

Cancelling a reply produced elsewhere is a ``PUBLISH`` on one channel that every
replica's store subscribes to.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncGenerator, Callable
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.errors import ReplyLogUnavailable, ReplyLost
from gateway.redis_client import redis_client
from gateway.streaming.replylog import Ended, LogEntry, ReplyMeta
from gateway.streaming.replylog_memory import MemoryReplyLog, MemoryReplyLogStore
from providers.events import Finish, TextDelta, ToolCallDelta

log = structlog.get_logger("tokenpipe.replylog")

LEASE_SECONDS = 3.0
RENEW_SECONDS = 1.0
BLOCK_SECONDS = 1.0
ORPHAN_GRACE_SECONDS = 60.0

_CREATE = """
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return 1
"""

# KEYS: log, meta, lease. ARGV: events (JSON array, or "" to only renew), ended,
# seconds to keep while live, lease ms, seconds to keep after the end.
_APPEND = """
if ARGV[1] ~= '' then redis.call('XADD', KEYS[1], '*', 'e', ARGV[1]) end
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[2], 'ended', '1')
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
  redis.call('DEL', KEYS[3])
else
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
end
return 1
"""


def _encode(entry: LogEntry) -> Any:
    if type(entry) is TextDelta:
        return entry.text
    if type(entry) is ToolCallDelta:
        return ["c", entry.index, entry.id, entry.name, entry.arguments]
    if type(entry) is Finish:
        return ["f", entry.reason]
    assert type(entry) is Ended
    return ["e", entry.usage, entry.error]


def _decode(item: Any) -> LogEntry:
    if isinstance(item, str):
        return TextDelta(item)
    kind = item[0]
    if kind == "c":
        return ToolCallDelta(index=item[1], id=item[2], name=item[3], arguments=item[4])
    if kind == "f":
        return Finish(item[1])
    usage = tuple(item[1]) if item[1] is not None else None
    return Ended(usage=usage, error=item[2])


def _entries(raw: list[Any]) -> tuple[list[LogEntry], bytes | None]:
    """Decoded events of stream entries, and the id of the last entry."""
    out: list[LogEntry] = []
    last = None
    for entry_id, fields in raw:
        last = entry_id
        out.extend(_decode(item) for item in orjson.loads(fields[b"e"]))
    return out, last


class _Keys:
    __slots__ = ("lease", "log", "meta")

    def __init__(self, prefix: str, reply_id: str) -> None:
        base = f"{prefix}:reply:{{{reply_id}}}"
        self.meta = f"{base}:meta"
        self.log = f"{base}:log"
        self.lease = f"{base}:lease"


class RedisReplyLog:
    """The producer's handle: events batched per loop turn, one flusher task per reply."""

    def __init__(self, store: RedisReplyLogStore, meta: ReplyMeta, keys: _Keys) -> None:
        self.meta = meta
        self.on_cancel: Callable[[], None] | None = None
        self._store = store
        self._keys = keys
        self._pending: list[LogEntry] = []
        self._wake = asyncio.Event()
        self._flusher = asyncio.create_task(self._flush_loop())

    def append(self, entry: LogEntry) -> None:
        """See ``ReplyLog.append``."""
        self._pending.append(entry)
        if not self._wake.is_set():
            self._wake.set()

    def attached(self) -> bool:
        """See ``ReplyLog.attached`` (readers on this replica)."""
        return self._store.readers.get(self.meta.reply_id, 0) > 0

    async def _flush_loop(self) -> None:
        keys = self._keys
        store = self._store
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RENEW_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            ended = bool(batch) and type(batch[-1]) is Ended
            data = orjson.dumps([_encode(e) for e in batch]).decode() if batch else ""
            try:
                await store.append_script(
                    keys=[keys.log, keys.meta, keys.lease],
                    args=[data, "1" if ended else "0", store.keep, store.lease_ms, store.ttl],
                )
            except RedisError as exc:
                log.warning("reply_log_write_failed", error=f"{type(exc).__name__}: {exc}")
                self._pending[:0] = batch  # retried with the next turn's events
                await asyncio.sleep(0.1)
                continue
            if ended:
                store.live.pop(self.meta.reply_id, None)
                return


class RedisReplyView:
    """A reader's handle on a log that may be produced on another replica."""

    def __init__(self, store: RedisReplyLogStore, meta: ReplyMeta, keys: _Keys) -> None:
        self.meta = meta
        self._store = store
        self._keys = keys

    async def snapshot(self) -> list[LogEntry]:
        """See ``ReplyView.snapshot``."""
        entries, _ = _entries(await self._store.redis.xrange(self._keys.log))
        return entries

    async def follow(self, heartbeat: float) -> AsyncGenerator[list[LogEntry], None]:
        """See ``ReplyView.follow``."""
        redis = self._store.redis
        keys = self._keys
        readers = self._store.readers
        reply_id = self.meta.reply_id
        readers[reply_id] = readers.get(reply_id, 0) + 1
        try:
            entries, last = _entries(await redis.xrange(keys.log))
            yield entries
            if entries and type(entries[-1]) is Ended:
                return
            cursor = last or b"0-0"
            quiet = 0.0
            block = min(heartbeat, BLOCK_SECONDS)
            while True:
                raw = await redis.xread({keys.log: cursor}, block=math.ceil(block * 1000))
                if raw:
                    entries, last = _entries(raw[0][1])
                    cursor = last or cursor
                    quiet = 0.0
                    yield entries
                    if entries and type(entries[-1]) is Ended:
                        return
                    continue
                quiet += block
                if not await redis.exists(keys.lease):
                    raw = await redis.xread({keys.log: cursor})  # an end written just now?
                    tail, _ = _entries(raw[0][1]) if raw else ([], None)
                    if tail and type(tail[-1]) is Ended:
                        yield tail
                        return
                    lost = ReplyLost("The replica producing this reply stopped; retry it.")
                    yield [*tail, Ended(error=lost.body()["error"], lost=True)]
                    return
                if quiet >= heartbeat:
                    quiet = 0.0
                    yield []
        finally:
            readers[reply_id] -= 1
            if not readers[reply_id]:
                del readers[reply_id]


class RedisReplyLogStore:
    """Reply logs in Redis; see the module docstring."""

    def __init__(self, url: str, *, ttl: float, prefix: str = "tokenpipe") -> None:
        self.redis: Redis = redis_client(
            url,
            socket_connect_timeout=1.0,
            # Above the longest XREAD BLOCK.
            socket_timeout=BLOCK_SECONDS + 4.0,
        )
        self.ttl = math.ceil(ttl)
        self.keep = math.ceil(ttl + ORPHAN_GRACE_SECONDS)
        self.lease_ms = math.ceil(LEASE_SECONDS * 1000)
        self._prefix = prefix
        self._channel = f"{prefix}:reply-cancel"
        self._create = self.redis.register_script(_CREATE)
        self.append_script = self.redis.register_script(_APPEND)
        #: Logs produced by this replica, while live (cancel finds them here).
        self.live: dict[str, RedisReplyLog] = {}
        #: Resumed readers on this replica, by reply id.
        self.readers: dict[str, int] = {}
        self._listener: asyncio.Task[None] | None = None
        #: Where a reply is logged when Redis is unreachable at its start: it streams
        #: all the same, resumable on this replica only.
        self.local = MemoryReplyLogStore(ttl=ttl)

    async def create(self, meta: ReplyMeta) -> RedisReplyLog | MemoryReplyLog:
        """See ``ReplyLogStore.create``."""
        try:
            return await self._create_in_redis(meta)
        except RedisError as exc:
            log.warning("reply_log_local", error=f"{type(exc).__name__}: {exc}")
            return await self.local.create(meta)

    async def _create_in_redis(self, meta: ReplyMeta) -> RedisReplyLog:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen())
        keys = _Keys(self._prefix, meta.reply_id)
        fields: list[str | bytes | int] = [
            "dialect",
            meta.dialect,
            "body",
            meta.body,
            "created",
            meta.created,
            "token",
            meta.token,
            "key",
            meta.key or "",
            "background",
            int(meta.background),
        ]
        await self._create(keys=[keys.meta, keys.lease], args=[self.keep, self.lease_ms, *fields])
        reply_log = RedisReplyLog(self, meta, keys)
        self.live[meta.reply_id] = reply_log
        return reply_log

    async def find(self, reply_id: str) -> RedisReplyView | MemoryReplyLog | None:
        """See ``ReplyLogStore.find``; a reply logged locally (Redis was down) first."""
        local = await self.local.find(reply_id)
        if local is not None:
            return local
        keys = _Keys(self._prefix, reply_id)
        try:
            raw: dict[bytes, bytes] = await self.redis.hgetall(keys.meta)  # type: ignore[misc]
        except RedisError as exc:
            raise ReplyLogUnavailable(
                "The reply log cannot be read right now; retry shortly.",
                headers={"Retry-After": "1"},
            ) from exc
        if not raw:
            return None
        meta = ReplyMeta(
            reply_id=reply_id,
            dialect=raw[b"dialect"].decode(),
            body=raw[b"body"],
            created=int(raw[b"created"]),
            token=raw[b"token"].decode(),
            key=raw[b"key"].decode() or None,
            background=raw[b"background"] == b"1",
        )
        return RedisReplyView(self, meta, keys)

    async def cancel(self, reply_id: str) -> None:
        """See ``ReplyLogStore.cancel``: here at once, elsewhere through the channel."""
        if self._cancel_local(reply_id):
            return
        if await self.local.find(reply_id) is not None:
            await self.local.cancel(reply_id)
            return
        try:
            await self.redis.publish(self._channel, reply_id)
        except RedisError as exc:
            raise ReplyLogUnavailable(
                "The cancel cannot reach the reply's replica right now; retry shortly.",
                headers={"Retry-After": "1"},
            ) from exc

    def _cancel_local(self, reply_id: str) -> bool:
        reply_log = self.live.get(reply_id)
        if reply_log is None or reply_log.on_cancel is None:
            return False
        reply_log.on_cancel()
        return True

    async def _listen(self) -> None:
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._channel)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._cancel_local(message["data"].decode())
            except RedisError as exc:
                log.warning("reply_cancel_listener_failed", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(1.0)

    async def aclose(self) -> None:
        """Stop the cancel listener and close the connection pool."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self.local.aclose()
        await self.redis.aclose()
