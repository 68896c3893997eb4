"""Admission: ``MemoryStore``, the in-process state store (the default; one process).

Each operation runs to completion without awaiting, so on one event loop it is
atomic with no lock. Memory per key is bounded: the request log holds at most
``rpm`` entries, the token window 61 one-second buckets, ended reservations are
forgotten after a day (and capped), and per-day usage keeps ``USAGE_DAYS`` days.
Per-model usage is keyed by model names from the routing table, a closed set.
"""

from __future__ import annotations

import functools
import math
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway.admission.store import (
    BUSY_RETRY_SECONDS,
    DEFAULT_RESERVATION_TTL,
    USAGE_DAYS,
    WINDOW_SECONDS,
    Admission,
    KeyUsage,
    Limits,
    RefusalReason,
    Reservation,
    UsageCounts,
    UsageRecord,
    empty_usage,
)

#: Ended reservations are remembered this long, so a late settle stays a no-op.
ENDED_GRACE_SECONDS = 86_400.0
_ENDED_CAP = 100_000


@dataclass(slots=True)
class _Lease:
    outstanding: int
    debited: int
    expires_at: float


@dataclass(slots=True)
class _Ended:
    at: float
    debited: int
    settled: bool


@dataclass(slots=True)
class _KeyState:
    requests: deque[float] = field(default_factory=deque)
    buckets: dict[int, int] = field(default_factory=dict)
    #: The sum of ``buckets``, and their oldest second (``inf`` when there is none):
    #: the window is pruned only once that one left it, not on every call.
    used: int = 0
    oldest_bucket: float = math.inf
    live: dict[str, _Lease] = field(default_factory=dict)
    ended: OrderedDict[str, _Ended] = field(default_factory=OrderedDict)
    outstanding: int = 0
    spent: int = 0
    budget: int | None = None
    #: No live lease expires before this (a lower bound): the leases are scanned for
    #: expiry only once it passed, not on every call (they are one per reply in flight).
    next_expiry: float = math.inf
    usage: KeyUsage = field(default_factory=empty_usage)


_DAY_SECONDS = 86_400


@functools.lru_cache(maxsize=8)
def _day_label(day: int) -> str:
    return datetime.fromtimestamp(day * _DAY_SECONDS, UTC).strftime("%Y-%m-%d")


def utc_day(now: float) -> str:
    """The UTC date of an epoch time, as ``YYYY-MM-DD``."""
    return _day_label(int(now // _DAY_SECONDS))


def oldest_day_kept(now: float) -> str:
    """The first UTC date still within the ``USAGE_DAYS`` kept."""
    return _day_label(int(now // _DAY_SECONDS) - (USAGE_DAYS - 1))


def _add(counts: UsageCounts, usage: UsageRecord) -> None:
    counts["requests"] += 1
    counts["prompt_tokens"] += usage.prompt_tokens
    counts["completion_tokens"] += usage.completion_tokens


def _zero() -> UsageCounts:
    return {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}


def _copy(counts: UsageCounts) -> UsageCounts:
    return {
        "requests": counts["requests"],
        "prompt_tokens": counts["prompt_tokens"],
        "completion_tokens": counts["completion_tokens"],
    }


class MemoryStore:
    """A ``StateStore`` held in this process."""

    def __init__(self, reservation_ttl: float = DEFAULT_RESERVATION_TTL) -> None:
        self._ttl = reservation_ttl
        self._keys: dict[str, _KeyState] = {}

    def _state(self, key: str, now: float) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        self._prune(state, now)
        return state

    @staticmethod
    def _prune(state: _KeyState, now: float) -> None:
        if now >= state.next_expiry:
            for rid in [rid for rid, lease in state.live.items() if lease.expires_at <= now]:
                lease = state.live.pop(rid)
                state.outstanding -= lease.outstanding
                state.ended[rid] = _Ended(now, lease.debited, settled=False)
            state.next_expiry = min(
                (lease.expires_at for lease in state.live.values()), default=math.inf
            )
        ended = state.ended
        while ended and (
            len(ended) > _ENDED_CAP or next(iter(ended.values())).at <= now - ENDED_GRACE_SECONDS
        ):
            ended.popitem(last=False)
        while state.requests and state.requests[0] <= now - WINDOW_SECONDS:
            state.requests.popleft()
        if now >= state.oldest_bucket + WINDOW_SECONDS:
            buckets = state.buckets
            for bucket in [b for b in buckets if b + WINDOW_SECONDS <= now]:
                state.used -= buckets.pop(bucket)
            state.oldest_bucket = min(buckets, default=math.inf)

    @staticmethod
    def _charge(state: _KeyState, tokens: int, now: float) -> None:
        if tokens > 0:
            bucket = math.floor(now)
            state.buckets[bucket] = state.buckets.get(bucket, 0) + tokens
            state.used += tokens
            if bucket < state.oldest_bucket:
                state.oldest_bucket = bucket
            state.spent += tokens

    @staticmethod
    def _remaining_budget(state: _KeyState, budget: int | None) -> int | None:
        return None if budget is None else max(0, budget - state.spent)

    async def admit(
        self, key: str, limits: Limits, reserve_tokens: int, now: float | None = None
    ) -> Admission:
        """See ``StateStore.admit``."""
        return self.admit_now(key, limits, reserve_tokens, now)

    def admit_now(
        self, key: str, limits: Limits, reserve_tokens: int, now: float | None = None
    ) -> Admission:
        """:meth:`admit` without a coroutine (``store.InstantStore``): the answer is
        here at once, so a streamed reply admits inline rather than in a task."""
        if reserve_tokens < 0:
            raise ValueError("reserve_tokens must be >= 0")
        now = time.time() if now is None else now
        state = self._state(key, now)
        state.budget = limits.budget_tokens
        used = state.used
        reserved = reserve_tokens
        reason: RefusalReason | None = None
        retry: float | None = None

        budget = limits.budget_tokens
        if budget is not None:
            room = budget - state.spent - state.outstanding
            if state.spent >= budget:
                reason = "insufficient_quota"
            elif room <= 0:
                reason, retry = "insufficient_quota", BUSY_RETRY_SECONDS
            else:
                reserved = min(reserve_tokens, room)
        if reason is None and limits.rpm is not None and len(state.requests) >= limits.rpm:
            reason = "rate_limit_requests"
            retry = state.requests[len(state.requests) - limits.rpm] + WINDOW_SECONDS - now
        if (
            reason is None
            and limits.max_streams is not None
            and len(state.live) >= limits.max_streams
        ):
            reason, retry = "too_many_streams", BUSY_RETRY_SECONDS
        if (
            reason is None
            and limits.tpm is not None
            and used + state.outstanding + reserved > limits.tpm
        ):
            reason = "rate_limit_tokens"
            retry = self._tokens_retry(state, used, reserved, limits.tpm, now)

        reservation: Reservation | None = None
        if reason is None:
            rid = secrets.token_hex(12)
            if limits.rpm is not None:
                state.requests.append(now)
            state.live[rid] = _Lease(reserved, 0, now + self._ttl)
            state.next_expiry = min(state.next_expiry, now + self._ttl)
            state.outstanding += reserved
            reservation = Reservation(rid, key, reserved, now + self._ttl, limits)

        return Admission(
            admitted=reservation is not None,
            reason=reason,
            retry_after=None if retry is None else max(retry, 0.001),
            limit_requests=limits.rpm,
            remaining_requests=None
            if limits.rpm is None
            else max(0, limits.rpm - len(state.requests)),
            reset_requests=None
            if limits.rpm is None
            else (state.requests[0] + WINDOW_SECONDS - now if state.requests else 0.0),
            limit_tokens=limits.tpm,
            remaining_tokens=None
            if limits.tpm is None
            else max(0, limits.tpm - used - state.outstanding),
            reset_tokens=None
            if limits.tpm is None
            else (state.oldest_bucket + WINDOW_SECONDS - now if state.buckets else 0.0),
            remaining_budget=self._remaining_budget(state, budget),
            reservation=reservation,
        )

    @staticmethod
    def _tokens_retry(
        state: _KeyState, used: int, reserved: int, tpm: int, now: float
    ) -> float | None:
        if reserved > tpm:
            return None  # larger than the whole window: waiting cannot help
        if state.outstanding + reserved > tpm:
            return BUSY_RETRY_SECONDS
        freed = 0
        for bucket in sorted(state.buckets):
            freed += state.buckets[bucket]
            if used - freed + state.outstanding + reserved <= tpm:
                return bucket + WINDOW_SECONDS - now
        return BUSY_RETRY_SECONDS  # unreachable: freeing every bucket always suffices

    async def debit(
        self, reservation: Reservation, tokens: int, now: float | None = None
    ) -> int | None:
        """See ``StateStore.debit``."""
        return self._debit(reservation, tokens, time.time() if now is None else now)

    def debit_soon(self, reservation: Reservation, tokens: int) -> None:
        """See ``StateStore.debit_soon``: here, at once."""
        self._debit(reservation, tokens, time.time())

    def _debit(self, reservation: Reservation, tokens: int, now: float) -> int | None:
        state = self._state(reservation.key, now)
        if tokens > 0:
            lease = state.live.get(reservation.id)
            ended = state.ended.get(reservation.id)
            if lease is not None:
                taken = min(tokens, lease.outstanding)
                lease.outstanding -= taken
                state.outstanding -= taken
                lease.debited += tokens
                # Tokens flowing are the producer alive: the lease goes on (the
                # scan's lower bound ``next_expiry`` stays valid when it moves later).
                lease.expires_at = now + self._ttl
                self._charge(state, tokens, now)
            elif ended is None or not ended.settled:
                # Lease lapsed (or forgotten): the tokens were still delivered.
                if ended is not None:
                    ended.debited += tokens
                self._charge(state, tokens, now)
        return self._remaining_budget(state, reservation.limits.budget_tokens)

    async def settle(
        self,
        reservation: Reservation,
        actual_tokens: int,
        usage: UsageRecord,
        now: float | None = None,
    ) -> bool:
        """See ``StateStore.settle``."""
        return self._settle(reservation, actual_tokens, usage, time.time() if now is None else now)

    def settle_soon(self, reservation: Reservation, actual_tokens: int, usage: UsageRecord) -> None:
        """See ``StateStore.settle_soon``: here, at once."""
        self._settle(reservation, actual_tokens, usage, time.time())

    def _settle(
        self, reservation: Reservation, actual_tokens: int, usage: UsageRecord, now: float
    ) -> bool:
        state = self._state(reservation.key, now)
        lease = state.live.pop(reservation.id, None)
        if lease is not None:
            debited = lease.debited
            state.outstanding -= lease.outstanding
        else:
            ended = state.ended.get(reservation.id)
            if ended is None or ended.settled:
                return False
            debited = ended.debited
        state.ended[reservation.id] = _Ended(now, debited, settled=True)
        state.ended.move_to_end(reservation.id)
        self._charge(state, actual_tokens - debited, now)

        totals = state.usage
        _add(totals, usage)
        _add(totals["by_model"].setdefault(usage.model, _zero()), usage)
        by_day = totals["by_day"]
        day = utc_day(now)
        counts = by_day.get(day)
        if counts is None:
            # A new day: drop the days that left the kept range (once a day).
            cutoff = oldest_day_kept(now)
            for old in [d for d in by_day if d < cutoff]:
                del by_day[old]
            counts = by_day[day] = _zero()
        _add(counts, usage)
        return True

    async def renew(self, reservation: Reservation, now: float | None = None) -> bool:
        """See ``StateStore.renew``."""
        now = time.time() if now is None else now
        lease = self._state(reservation.key, now).live.get(reservation.id)
        if lease is None:
            return False
        lease.expires_at = now + self._ttl
        return True

    async def usage(self, key: str | None = None) -> dict[str, KeyUsage]:
        """See ``StateStore.usage``."""
        names = list(self._keys) if key is None else [key]
        result: dict[str, KeyUsage] = {}
        for name in names:
            state = self._keys.get(name)
            if state is None:
                result[name] = empty_usage()
                continue
            totals = state.usage
            result[name] = {
                "requests": totals["requests"],
                "prompt_tokens": totals["prompt_tokens"],
                "completion_tokens": totals["completion_tokens"],
                "by_model": {m: _copy(c) for m, c in totals["by_model"].items()},
                "by_day": {d: _copy(c) for d, c in sorted(totals["by_day"].items())},
                "budget_spent": state.spent,
                "remaining_budget": self._remaining_budget(state, state.budget),
            }
        return result

    async def flush(self) -> None:
        """Nothing is queued here."""

    async def aclose(self) -> None:
        """Nothing to release."""
