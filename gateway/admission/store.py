"""Admission: the state store's contract and the values crossing it.

A request's life against a ``StateStore``::

    admission = await store.admit(identity.name, identity.limits, reserve_tokens=estimate)
    if not admission.admitted:
        ...  # 429 with admission.reason, Retry-After from admission.retry_after
    reservation = admission.reservation
    try:
        ...  # every 16 tokens, while within the reservation (the budget had room):
        store.debit_soon(reservation, delivered_since_last_debit)
        ...  # past it (an upstream ignoring max_tokens), wait for the answer:
        remaining = await store.debit(reservation, delivered_since_last_debit)
        if remaining is not None and remaining <= 0: ...  # budget gone: end the stream
    finally:
        store.settle_soon(reservation, actual_tokens, UsageRecord(model, prompt, completion))

Semantics shared by every implementation:

- Requests per minute: a sliding log of admitted requests over the last 60 s.
- Tokens per minute: tokens charged (debits and settlements) in 1 s buckets over
  the last 60 s, plus the outstanding part of every live reservation.
- Streams: the number of live reservations (each one is also the stream's lease).
- Budget: a lifetime token allowance. Spent plus outstanding must leave room;
  a reservation larger than that room is clamped to it (``Reservation.reserved``),
  so the caller can cap ``max_tokens``; no room at all is ``insufficient_quota``.
- A reservation not settled or renewed before ``expires_at`` (its process died)
  stops counting toward streams and tokens the next time the key is touched.
  The store renews the leases of the replies it admitted while they live (a
  debit renews its lease): callers never need ``renew``.
- The ``*_soon`` operations answer nothing and may be applied later (the Redis
  store batches them); ``flush`` applies what is queued, and ``usage`` and
  ``aclose`` flush first.
- Times are wall-clock epoch seconds (``time.time()``): several processes share them.

Failure: every operation raises ``StoreUnavailable`` and nothing else when the
backing service cannot answer; the caller answers 503 ``limits_unavailable``
or, for a ``fail_open`` key, admits without limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, TypedDict, runtime_checkable

RefusalReason = Literal[
    "rate_limit_requests", "rate_limit_tokens", "too_many_streams", "insufficient_quota"
]

#: Length of the requests and tokens windows.
WINDOW_SECONDS = 60.0
#: A reservation lives this long unless renewed (the in-process store; the Redis
#: store renews live leases every 20 s and lets a dead process's lapse after 60 s).
DEFAULT_RESERVATION_TTL = 600.0
#: Per-day usage kept this many days.
USAGE_DAYS = 90
#: Suggested retry when only in-flight work (streams, reservations) stands in the way:
#: it ends at an unknown time, and retrying soon is cheap.
BUSY_RETRY_SECONDS = 1.0


class StoreUnavailable(Exception):
    """The state store could not answer (Redis down, timed out, refused the write)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """One key's limits; ``None`` is unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    max_streams: int | None = None
    budget_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    """A live admission: tokens held against tpm and budget, and a stream lease.

    Pass it back to ``debit``, ``renew`` and (exactly once) ``settle``.
    """

    id: str
    #: The key's name (not its secret).
    key: str
    #: Tokens held at admission (possibly clamped to the remaining budget).
    reserved: int
    #: Epoch seconds when the lease lapses unless renewed.
    expires_at: float
    limits: Limits


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to ``admit``, with what OpenAI's ``x-ratelimit-*`` headers need.

    ``remaining_*`` and ``reset_*`` are ``None`` when that limit is unset.
    ``reset_*`` is the number of seconds until the oldest charge leaves the
    window (``remaining`` then grows); 0 when the window is empty.
    """

    admitted: bool
    reason: RefusalReason | None = None
    #: Seconds to wait before retrying; ``None`` when admitted or when waiting
    #: cannot help (budget spent, or a request larger than the whole tpm).
    retry_after: float | None = None
    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None
    remaining_budget: int | None = None
    reservation: Reservation | None = None


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """What one finished request used, for the usage totals."""

    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class UsageCounts(TypedDict):
    """Totals for one slice of usage (a key, a model, a day)."""

    requests: int
    prompt_tokens: int
    completion_tokens: int


class KeyUsage(UsageCounts):
    """One key's usage; ``by_day`` is keyed by UTC date ``YYYY-MM-DD``."""

    by_model: dict[str, UsageCounts]
    by_day: dict[str, UsageCounts]
    budget_spent: int
    #: From the budget passed to the latest ``admit``; ``None`` when unlimited.
    remaining_budget: int | None


def empty_usage() -> KeyUsage:
    """A key that has used nothing."""
    return {
        "requests": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "by_model": {},
        "by_day": {},
        "budget_spent": 0,
        "remaining_budget": None,
    }


class StateStore(Protocol):
    """Admission state shared by everything serving one set of keys."""

    async def admit(
        self, key: str, limits: Limits, reserve_tokens: int, now: float | None = None
    ) -> Admission:
        """Atomically check every limit and, if all pass, record the request and
        open a reservation of ``reserve_tokens`` (the prompt plus expected output).

        Checks, first refusal wins: budget, rpm, max_streams, tpm.
        """
        ...

    async def debit(
        self, reservation: Reservation, tokens: int, now: float | None = None
    ) -> int | None:
        """Charge tokens delivered mid-stream to tpm and budget now, taking them
        off the reservation's outstanding amount. Returns the remaining budget
        (may be <= 0: stop the stream), ``None`` when the budget is unlimited."""
        ...

    async def settle(
        self,
        reservation: Reservation,
        actual_tokens: int,
        usage: UsageRecord,
        now: float | None = None,
    ) -> bool:
        """Release the reservation and its lease, charge ``actual_tokens`` minus
        what was already debited, and add ``usage`` to the totals.

        Exactly once per reservation: returns ``False`` (and changes nothing)
        when it was already settled."""
        ...

    def debit_soon(self, reservation: Reservation, tokens: int) -> None:
        """``debit`` without an answer, applied now or in the store's next batch:
        for tokens within the reservation, which the budget already made room for."""
        ...

    def settle_soon(self, reservation: Reservation, actual_tokens: int, usage: UsageRecord) -> None:
        """``settle`` without an answer, applied now or in the store's next batch
        (the Redis store retries it while Redis is unreachable)."""
        ...

    async def flush(self) -> None:
        """Apply every queued ``*_soon`` (and leave it queued if the store cannot
        answer: raises nothing)."""
        ...

    async def renew(self, reservation: Reservation, now: float | None = None) -> bool:
        """Push the lease's expiry out by the store's TTL; ``False`` if it
        already ended (settled or expired)."""
        ...

    async def usage(self, key: str | None = None) -> dict[str, KeyUsage]:
        """Usage by key name: every key seen, or only ``key``."""
        ...

    async def aclose(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...


@runtime_checkable
class InstantStore(Protocol):
    """A store that answers an admission at once, without awaiting (in process):
    a streamed reply then admits inline, with no task and no coroutine for it."""

    def admit_now(
        self, key: str, limits: Limits, reserve_tokens: int, now: float | None = None
    ) -> Admission:
        """``StateStore.admit``, answered at once."""
        ...
