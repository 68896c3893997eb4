"""Admission: ``RedisStore``, the state store shared by several gateway processes.

Every operation is one Lua script (``redis_scripts``) registered once and run
with EVALSHA, falling back to loading it through redis-py (after a Redis restart,
say). The scripts go on one connection of their own (``gateway.redis_channel``;
redis-py's pool over TLS); the rest (the key index, usage reads) through a
``redis.asyncio`` pool. Keys are ``<prefix>:{<name>}:<part>``: the hash tag keeps
one API key's state in one cluster slot.

Only admission waits for Redis. What a reply does later is queued and sent in
batches, one ``BATCH`` script per API key: the debits of tokens delivered within
a reservation (``debit_soon``) every :data:`FLUSH_SECONDS`, the settles
(``settle_soon``) at the end of the loop turn that queued them (or when the batch
in flight returns: under load they gather while it is away), and the renewal of
every live lease every :data:`RENEW_SECONDS` (a lease lapses
:data:`LEASE_SECONDS` after its last renewal, so the reservation of a reply whose
process died stops counting within a minute). A batch that fails is not lost:
its settles are retried, backing off up to :data:`MAX_RETRY_SECONDS` (at most
:data:`MAX_PENDING_SETTLES` kept); its debits are dropped, which is safe, since a
settle charges whatever was not debited.

Failure is fast and typed: half a second to connect, a second per command
(one ``asyncio.timeout`` around it: redis-py's own ``socket_timeout`` would run
every send in a task of its own), on the pool one immediate retry on a dropped
connection (a stale pooled socket after a restart) and none on a timeout; on the
channel no retry (a batch stays queued for the next). Any Redis or socket
error leaves this module as ``StoreUnavailable``. The pool reconnects by itself
once Redis is back.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from gateway.admission import redis_scripts
from gateway.admission.memory_store import ENDED_GRACE_SECONDS, oldest_day_kept, utc_day
from gateway.admission.store import (
    Admission,
    KeyUsage,
    Limits,
    RefusalReason,
    Reservation,
    StoreUnavailable,
    UsageCounts,
    UsageRecord,
    empty_usage,
)
from gateway.redis_channel import ScriptChannel
from gateway.redis_client import redis_client

log = structlog.get_logger("tokenpipe.admission")

#: Queued debits, settles and renewals go to Redis this often.
FLUSH_SECONDS = 0.05
#: A lease lapses this long after its last renewal (its process died)...
LEASE_SECONDS = 60.0
#: ...and every live one is renewed this often.
RENEW_SECONDS = 20.0
#: The longest wait between two tries of a batch while Redis is unreachable.
MAX_RETRY_SECONDS = 5.0
#: Settles kept for a retry while Redis is unreachable; beyond, the oldest are dropped.
MAX_PENDING_SETTLES = 100_000


def _arg(value: int | float | None) -> str:
    # Lua's tonumber("") is nil: how "unlimited" and "server clock" travel.
    return "" if value is None else repr(value)


def _opt_int(value: Any) -> int | None:
    return None if int(value) < 0 else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value == "" else float(value)


class RedisStore:
    """A ``StateStore`` in Redis: limits hold across every process sharing it."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tokenpipe",
        reservation_ttl: float = LEASE_SECONDS,
        connect_timeout: float = 0.5,
        timeout: float = 1.0,
        flush_seconds: float = FLUSH_SECONDS,
        renew_seconds: float = RENEW_SECONDS,
    ) -> None:
        self._prefix = prefix
        self._ttl = reservation_ttl
        self._timeout = timeout
        self._flush_seconds = flush_seconds
        self._renew_seconds = renew_seconds
        # The lease keys must outlive the longest lease plus the settle grace.
        self._keep = math.ceil(reservation_ttl + ENDED_GRACE_SECONDS)
        self._redis: Redis = redis_client(
            url,
            decode_responses=True,
            socket_connect_timeout=connect_timeout,
            # redis-py's default retries three times with backoff up to 10 s: a dead
            # Redis would hang requests. Only a dropped connection is retried.
            retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1, (RedisConnectionError,)),
            health_check_interval=30,
        )
        self._admit = self._redis.register_script(redis_scripts.ADMIT)
        #: The connection every script runs on (``gateway.redis_channel``), except
        #: over TLS.
        self._channel = (
            ScriptChannel(url, connect_timeout=connect_timeout)
            if ScriptChannel.serves(url)
            else None
        )
        self._debit = self._redis.register_script(redis_scripts.DEBIT)
        self._settle = self._redis.register_script(redis_scripts.SETTLE)
        self._renew = self._redis.register_script(redis_scripts.RENEW)
        self._batch = self._redis.register_script(redis_scripts.BATCH)
        #: Names already added to the key index by this process (a closed set).
        self._indexed: set[str] = set()
        #: Live reservations admitted here, by key name and id: renewed in batches.
        self._live: dict[str, dict[str, Reservation]] = {}
        #: Queued for the next batch, by key name: debits (id -> tokens) and settles.
        self._debits: dict[str, dict[str, int]] = {}
        self._settles: dict[str, dict[str, tuple[int, UsageRecord]]] = {}
        self._pending_settles = 0
        self._timer: asyncio.Handle | None = None
        self._timer_when = 0.0
        self._flushing: asyncio.Task[None] | None = None
        self._next_renew = 0.0
        #: Seconds before the next try while Redis refuses batches (0: it takes them).
        self._retry_delay = 0.0

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self._prefix!r})"

    def _keys(self, name: str) -> list[str]:
        return [f"{self._prefix}:{{{name}}}:{part}" for part in redis_scripts.KEY_SUFFIXES]

    @property
    def _index(self) -> str:
        return f"{self._prefix}:keys"

    @contextmanager
    def _unavailable(self) -> Iterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            # Redis may have restarted empty: re-index names on the next admit.
            self._indexed.clear()
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def _run(
        self,
        script: Any,
        name: str,
        args: Sequence[str | int],
    ) -> Any:
        """Run ``script`` on ``name``'s keys, on the channel (``gateway.redis_channel``),
        or through redis-py over TLS or when Redis does not have the script."""
        keys = self._keys(name)
        channel = self._channel
        with self._unavailable():
            try:
                async with asyncio.timeout(self._timeout):
                    if channel is not None:
                        try:
                            return await channel.evalsha(script.sha, keys, args)
                        except ResponseError as exc:
                            if not str(exc).startswith("NOSCRIPT"):
                                raise
                        # Redis does not have it (restarted empty): redis-py loads it.
                    return await script(keys=keys, args=args)
            except TimeoutError:
                if channel is not None:
                    channel.reset()  # in step no more: replies to come would be misread
                raise

    async def admit(
        self, key: str, limits: Limits, reserve_tokens: int, now: float | None = None
    ) -> Admission:
        """See ``StateStore.admit``."""
        if reserve_tokens < 0:
            raise ValueError("reserve_tokens must be >= 0")
        if key not in self._indexed:
            with self._unavailable():
                async with asyncio.timeout(self._timeout):
                    await self._redis.sadd(self._index, key)  # type: ignore[misc]
                    await self._redis.expire(self._index, redis_scripts.STATE_TTL_SECONDS)
            self._indexed.add(key)
        rid = secrets.token_hex(12)
        raw = await self._run(
            self._admit,
            key,
            [
                _arg(now),
                self._keep,
                rid,
                reserve_tokens,
                _arg(self._ttl),
                _arg(limits.rpm),
                _arg(limits.tpm),
                _arg(limits.max_streams),
                _arg(limits.budget_tokens),
            ],
        )
        admitted = bool(raw[0])
        reason: RefusalReason | None = raw[1] or None
        reservation = (
            Reservation(rid, key, int(raw[8]), float(raw[9]), limits) if admitted else None
        )
        if reservation is not None:
            self._live.setdefault(key, {})[rid] = reservation
            self._schedule(self._renew_seconds)
        return Admission(
            admitted=admitted,
            reason=reason,
            retry_after=None if admitted else _opt_float(raw[2]),
            limit_requests=limits.rpm,
            remaining_requests=_opt_int(raw[3]),
            reset_requests=_opt_float(raw[4]),
            limit_tokens=limits.tpm,
            remaining_tokens=_opt_int(raw[5]),
            reset_tokens=_opt_float(raw[6]),
            remaining_budget=_opt_int(raw[7]),
            reservation=reservation,
        )

    async def debit(
        self, reservation: Reservation, tokens: int, now: float | None = None
    ) -> int | None:
        """See ``StateStore.debit``; tokens queued by ``debit_soon`` go with it."""
        queued = self._debits.get(reservation.key)
        if queued:
            tokens += queued.pop(reservation.id, 0)
        raw = await self._run(
            self._debit,
            reservation.key,
            [_arg(now), self._keep, reservation.id, tokens, _arg(reservation.limits.budget_tokens)],
        )
        return _opt_int(raw)

    def debit_soon(self, reservation: Reservation, tokens: int) -> None:
        """See ``StateStore.debit_soon``: in the next batch."""
        if tokens <= 0:
            return
        queued = self._debits.setdefault(reservation.key, {})
        queued[reservation.id] = queued.get(reservation.id, 0) + tokens
        self._schedule(self._flush_seconds)

    def settle_soon(self, reservation: Reservation, actual_tokens: int, usage: UsageRecord) -> None:
        """See ``StateStore.settle_soon``: in the next batch (retried while Redis is away)."""
        self._forget(reservation)
        self._queue_settle(reservation.key, reservation.id, (actual_tokens, usage))
        # At once (with whatever else this loop turn queued): a key at its
        # max_streams gets its stream back before its client's next request.
        self._schedule(0)

    def _forget(self, reservation: Reservation) -> None:
        """A settling reservation: no more renewals; its queued debits are dropped
        (the settle charges what was not debited)."""
        key = reservation.key
        live = self._live.get(key)
        if live is not None and live.pop(reservation.id, None) is not None and not live:
            del self._live[key]
        queued = self._debits.get(key)
        if queued:
            queued.pop(reservation.id, None)

    def _queue_settle(self, name: str, rid: str, entry: tuple[int, UsageRecord]) -> None:
        settles = self._settles.setdefault(name, {})
        if rid in settles:
            return
        if self._pending_settles >= MAX_PENDING_SETTLES:
            for key, queued in self._settles.items():
                if queued:
                    del queued[next(iter(queued))]
                    self._pending_settles -= 1
                    log.error("settle_dropped", key=key, reason="redis unreachable, queue full")
                    break
        settles[rid] = entry
        self._pending_settles += 1

    def _schedule(self, delay: float) -> None:
        """Run a batch within ``delay`` seconds (sooner if one is due sooner)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        timer = self._timer
        if timer is not None:
            # Our own record of when: uvloop hands back a plain Handle (no .when())
            # for a time already due.
            if self._timer_when <= when:
                return
            timer.cancel()
        self._timer_when = when
        self._timer = loop.call_at(when, self._start_flush)

    def _start_flush(self) -> None:
        self._timer = None
        if self._flushing is None:  # else the batch in flight schedules the next
            self._flushing = asyncio.ensure_future(self._batches())

    async def _batches(self) -> None:
        ok = False
        try:
            ok = await self._flush_all()
        except Exception as exc:
            log.error("batch_failed", error=repr(exc))
        finally:
            self._flushing = None
            if ok:
                if self._retry_delay:
                    log.info("batch_resumed")
                self._retry_delay = 0.0
            else:
                # Redis is away: retry the settles kept, backing off (not a hot loop).
                self._retry_delay = min(max(2 * self._retry_delay, 0.25), MAX_RETRY_SECONDS)
            if self._settles:
                self._schedule(self._retry_delay)
            elif self._debits:
                self._schedule(max(self._flush_seconds, self._retry_delay))
            elif self._live:
                self._schedule(max(0.0, self._next_renew - asyncio.get_running_loop().time()))

    async def flush(self) -> None:
        """See ``StateStore.flush``: the batch in flight, then one more with what is
        queued (what fails stays queued for the next)."""
        if self._flushing is not None:
            await asyncio.wait([self._flushing])
        if (self._debits or self._settles) and self._flushing is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._flushing = task = asyncio.ensure_future(self._batches())
            await asyncio.wait([task])

    async def _flush_all(self) -> bool:
        """Send every queued batch; whether Redis took them all."""
        ok = True
        loop = asyncio.get_running_loop()
        renew = loop.time() >= self._next_renew
        if renew:
            self._next_renew = loop.time() + self._renew_seconds
        debits, self._debits = self._debits, {}
        settles, self._settles = self._settles, {}
        self._pending_settles = 0
        names = set(debits) | set(settles) | (set(self._live) if renew else set())
        wall = time.time()
        day, first_kept = utc_day(wall), oldest_day_kept(wall)
        for name in names:
            queued = debits.get(name, {})
            if renew:
                for rid in self._live.get(name, ()):
                    queued.setdefault(rid, 0)
            done = settles.get(name, {})
            args: list[str | int] = ["", self._keep, _arg(self._ttl), day, first_kept, len(queued)]
            for rid, tokens in queued.items():
                args += (rid, tokens)
            for rid, (actual, usage) in done.items():
                args += (rid, actual, usage.prompt_tokens, usage.completion_tokens, usage.model)
            try:
                await self._run(self._batch, name, args)
            except StoreUnavailable as exc:
                if renew:
                    self._next_renew = 0.0
                if ok and not self._retry_delay:  # once per outage, not per retry
                    log.warning("batch_deferred", key=name, settles=len(done), error=str(exc))
                ok = False
                for rid, entry in done.items():
                    self._queue_settle(name, rid, entry)
        return ok

    async def settle(
        self,
        reservation: Reservation,
        actual_tokens: int,
        usage: UsageRecord,
        now: float | None = None,
    ) -> bool:
        """See ``StateStore.settle``."""
        self._forget(reservation)
        wall = time.time() if now is None else now
        raw = await self._run(
            self._settle,
            reservation.key,
            [
                _arg(now),
                self._keep,
                reservation.id,
                actual_tokens,
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.model,
                utc_day(wall),
                oldest_day_kept(wall),
            ],
        )
        return bool(raw)

    async def renew(self, reservation: Reservation, now: float | None = None) -> bool:
        """See ``StateStore.renew``."""
        raw = await self._run(
            self._renew, reservation.key, [_arg(now), self._keep, reservation.id, _arg(self._ttl)]
        )
        return bool(raw)

    async def usage(self, key: str | None = None) -> dict[str, KeyUsage]:
        """See ``StateStore.usage``; what this process has queued first."""
        await self.flush()
        with self._unavailable():
            names = sorted(await self._redis.smembers(self._index)) if key is None else [key]  # type: ignore[misc]
            result: dict[str, KeyUsage] = {}
            for name in names:
                keys = self._keys(name)
                state = await self._redis.hgetall(keys[0])  # type: ignore[misc]
                days = await self._redis.hgetall(keys[6])  # type: ignore[misc]
                result[name] = _parse_usage(state, days)
        return result

    async def aclose(self) -> None:
        """Send what is queued (if Redis answers), then close the connection pool."""
        try:
            await self.flush()
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._pending_settles:
                log.warning("settles_lost", settles=self._pending_settles)
            if self._channel is not None:
                self._channel.close()
            await self._redis.aclose()


def _counts(fields: dict[str, str], prefix: str) -> UsageCounts:
    return {
        "requests": int(fields.get(f"{prefix}r", 0)),
        "prompt_tokens": int(fields.get(f"{prefix}p", 0)),
        "completion_tokens": int(fields.get(f"{prefix}c", 0)),
    }


def _parse_usage(state: dict[str, str], days: dict[str, str]) -> KeyUsage:
    usage = empty_usage()
    usage["requests"] = int(state.get("requests", 0))
    usage["prompt_tokens"] = int(state.get("prompt", 0))
    usage["completion_tokens"] = int(state.get("completion", 0))
    usage["budget_spent"] = spent = int(state.get("spent", 0))
    if "budget" in state:
        usage["remaining_budget"] = max(0, int(state["budget"]) - spent)
    models = {f[2:-2] for f in state if f.startswith("m:")}
    usage["by_model"] = {m: _counts(state, f"m:{m}:") for m in sorted(models)}
    # Days past the kept range linger until the next new day prunes them.
    first_kept = oldest_day_kept(time.time())
    kept = sorted({f[:10] for f in days if f[:10] >= first_kept})
    usage["by_day"] = {d: _counts(days, f"{d}:") for d in kept}
    return usage
