"""Admission: ``RedisStore``, the state store shared by several gateway processes.

One ``redis.asyncio`` connection pool; every operation is one Lua script
(``redis_scripts``) registered once and run with EVALSHA, falling back to
loading it (after a Redis restart, say). Keys are ``<prefix>:{<name>}:<part>``:
the hash tag keeps one API key's state in one cluster slot.

Failure is fast and typed: half a second to connect, a second per command,
one immediate retry on a dropped connection (a stale pooled socket after a
restart) and none on a timeout. Any Redis or socket error leaves this module
as ``StoreUnavailable``. The pool reconnects by itself once Redis is back.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.admission import redis_scripts
from gateway.admission.memory_store import ENDED_GRACE_SECONDS, oldest_day_kept, utc_day
from gateway.admission.store import (
    DEFAULT_RESERVATION_TTL,
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
        reservation_ttl: float = DEFAULT_RESERVATION_TTL,
        connect_timeout: float = 0.5,
        timeout: float = 1.0,
    ) -> None:
        self._prefix = prefix
        self._ttl = reservation_ttl
        # The lease keys must outlive the longest lease plus the settle grace.
        self._keep = math.ceil(reservation_ttl + ENDED_GRACE_SECONDS)
        self._redis: Redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
            # redis-py's default retries three times with backoff up to 10 s: a dead
            # Redis would hang requests. Only a dropped connection is retried.
            retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1, (RedisConnectionError,)),
            health_check_interval=30,
        )
        self._admit = self._redis.register_script(redis_scripts.ADMIT)
        self._debit = self._redis.register_script(redis_scripts.DEBIT)
        self._settle = self._redis.register_script(redis_scripts.SETTLE)
        self._renew = self._redis.register_script(redis_scripts.RENEW)
        #: Names already added to the key index by this process (a closed set).
        self._indexed: set[str] = set()

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

    async def _run(self, script: Any, name: str, args: Sequence[str | int]) -> Any:
        with self._unavailable():
            return await script(keys=self._keys(name), args=args)

    async def admit(
        self, key: str, limits: Limits, reserve_tokens: int, now: float | None = None
    ) -> Admission:
        """See ``StateStore.admit``."""
        if reserve_tokens < 0:
            raise ValueError("reserve_tokens must be >= 0")
        if key not in self._indexed:
            with self._unavailable():
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
            reservation=Reservation(rid, key, int(raw[8]), float(raw[9]), limits)
            if admitted
            else None,
        )

    async def debit(
        self, reservation: Reservation, tokens: int, now: float | None = None
    ) -> int | None:
        """See ``StateStore.debit``."""
        raw = await self._run(
            self._debit,
            reservation.key,
            [_arg(now), self._keep, reservation.id, tokens, _arg(reservation.limits.budget_tokens)],
        )
        return _opt_int(raw)

    async def settle(
        self,
        reservation: Reservation,
        actual_tokens: int,
        usage: UsageRecord,
        now: float | None = None,
    ) -> bool:
        """See ``StateStore.settle``."""
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
        """See ``StateStore.usage``."""
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
        """Close the connection pool."""
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
