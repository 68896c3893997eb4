"""One behavioural suite for every ``StateStore``: in memory and on a real redis-server."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.admission.headers import format_reset, ratelimit_headers
from gateway.admission.memory_store import MemoryStore, utc_day
from gateway.admission.redis_store import RedisStore
from gateway.admission.store import Limits, Reservation, StateStore, UsageRecord

MakeStore = Callable[..., StateStore]
DAY = 86_400.0


@pytest.fixture(params=["memory", "redis"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[MakeStore]:
    """``make_store(**options)``: a fresh store of the parametrised kind."""
    server: Any = request.getfixturevalue("redis_server") if request.param == "redis" else None
    stores: list[StateStore] = []

    def make(**options: Any) -> StateStore:
        store: StateStore = (
            MemoryStore(**options) if server is None else RedisStore(server.url, **options)
        )
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.aclose()


@pytest.fixture
def store(make_store: MakeStore) -> StateStore:
    return make_store()


@pytest.fixture
def t0() -> float:
    # Recent (usage by day is kept 90 days back from the real clock) and mid-second.
    return float(int(time.time()) - 10 * DAY) + 0.5


def _reservation(admission: Any) -> Reservation:
    assert admission.admitted, admission
    assert admission.reservation is not None
    return admission.reservation  # type: ignore[no-any-return]


async def test_rpm_is_a_sliding_60s_window(store: StateStore, t0: float) -> None:
    limits = Limits(rpm=3)
    remaining = []
    for i in range(3):
        admission = await store.admit("k", limits, 0, now=t0 + i)
        remaining.append(admission.remaining_requests)
    assert remaining == [2, 1, 0]

    refused = await store.admit("k", limits, 0, now=t0 + 10)
    assert not refused.admitted
    assert refused.reason == "rate_limit_requests"
    assert refused.reservation is None
    # The first request (t0) leaves the window at t0 + 60.
    assert refused.retry_after == pytest.approx(50.0)
    assert refused.remaining_requests == 0

    assert (await store.admit("k", limits, 0, now=t0 + 60.01)).admitted
    assert not (await store.admit("k", limits, 0, now=t0 + 60.02)).admitted


async def test_keys_are_limited_separately(store: StateStore, t0: float) -> None:
    limits = Limits(rpm=1)
    assert (await store.admit("a", limits, 0, now=t0)).admitted
    assert (await store.admit("b", limits, 0, now=t0)).admitted
    assert not (await store.admit("a", limits, 0, now=t0)).admitted


async def test_concurrent_reservations_never_exceed_tpm(store: StateStore, t0: float) -> None:
    limits = Limits(tpm=100)
    results = await asyncio.gather(*(store.admit("k", limits, 10, now=t0) for _ in range(20)))
    admitted = [r for r in results if r.admitted]
    assert len(admitted) == 10
    assert sum(_reservation(r).reserved for r in admitted) <= 100
    refused = [r for r in results if not r.admitted]
    assert {r.reason for r in refused} == {"rate_limit_tokens"}
    # Only reservations (not charged tokens) stand in the way: retry soon.
    assert all(r.retry_after == pytest.approx(1.0) for r in refused)


async def test_charged_tokens_leave_the_tpm_window_after_60s(store: StateStore, t0: float) -> None:
    limits = Limits(tpm=100)
    reservation = _reservation(await store.admit("k", limits, 50, now=t0))
    assert await store.settle(reservation, 80, UsageRecord("m", 30, 50), now=t0 + 2)

    refused = await store.admit("k", limits, 30, now=t0 + 10)
    assert refused.reason == "rate_limit_tokens"
    assert refused.remaining_tokens == 20
    # The 80 tokens were charged in second t0 + 2 (bucket floor(t0) + 2).
    assert refused.retry_after == pytest.approx(int(t0) + 2 + 60 - (t0 + 10))

    assert (await store.admit("k", limits, 30, now=t0 + 62)).admitted
    too_big = await store.admit("k", limits, 101, now=t0 + 62)
    assert too_big.reason == "rate_limit_tokens"
    assert too_big.retry_after is None  # larger than the whole window


async def test_max_streams_counts_open_leases(store: StateStore, t0: float) -> None:
    limits = Limits(max_streams=2)
    first = _reservation(await store.admit("k", limits, 0, now=t0))
    _reservation(await store.admit("k", limits, 0, now=t0))
    refused = await store.admit("k", limits, 0, now=t0)
    assert refused.reason == "too_many_streams"
    assert refused.retry_after == pytest.approx(1.0)

    assert await store.settle(first, 0, UsageRecord("m"), now=t0 + 1)
    assert (await store.admit("k", limits, 0, now=t0 + 1)).admitted


async def test_exhausted_budget_is_insufficient_quota(store: StateStore, t0: float) -> None:
    limits = Limits(budget_tokens=100)
    reservation = _reservation(await store.admit("k", limits, 60, now=t0))
    assert await store.settle(reservation, 100, UsageRecord("m", 40, 60), now=t0 + 1)

    refused = await store.admit("k", limits, 1, now=t0 + 2)
    assert refused.reason == "insufficient_quota"
    assert refused.retry_after is None  # waiting cannot help
    assert refused.remaining_budget == 0
    usage = (await store.usage("k"))["k"]
    assert usage["budget_spent"] == 100
    assert usage["remaining_budget"] == 0


async def test_reservation_is_clamped_to_the_budget_left(store: StateStore, t0: float) -> None:
    limits = Limits(budget_tokens=100)
    first = _reservation(await store.admit("k", limits, 500, now=t0))
    assert first.reserved == 100
    # Outstanding reservations fill the budget: in-flight work, so retry soon.
    refused = await store.admit("k", limits, 1, now=t0)
    assert refused.reason == "insufficient_quota"
    assert refused.retry_after == pytest.approx(1.0)
    assert await store.settle(first, 30, UsageRecord("m", 10, 20), now=t0 + 1)
    assert _reservation(await store.admit("k", limits, 500, now=t0 + 1)).reserved == 70


async def test_debit_mid_stream_returns_the_shrinking_budget(store: StateStore, t0: float) -> None:
    limits = Limits(budget_tokens=100)
    reservation = _reservation(await store.admit("k", limits, 50, now=t0))
    seen = [await store.debit(reservation, 16, now=t0 + 0.1 * i) for i in range(1, 4)]
    assert seen == [84, 68, 52]
    # Settle charges only what was not debited yet (60 - 48).
    assert await store.settle(reservation, 60, UsageRecord("m", 10, 50), now=t0 + 1)
    assert (await store.usage("k"))["k"]["budget_spent"] == 60
    more = _reservation(await store.admit("k", limits, 10, now=t0 + 2))
    assert await store.debit(more, 45, now=t0 + 2) == 0  # ran out mid-stream
    unlimited = _reservation(await store.admit("u", Limits(), 10, now=t0))
    assert await store.debit(unlimited, 16, now=t0) is None


async def test_debits_count_toward_tpm_at_once(store: StateStore, t0: float) -> None:
    limits = Limits(tpm=100)
    reservation = _reservation(await store.admit("k", limits, 50, now=t0))
    await store.debit(reservation, 30, now=t0)  # 30 charged, 20 still outstanding
    assert (await store.admit("k", limits, 50, now=t0)).admitted  # 30 + 20 + 50
    assert not (await store.admit("k", limits, 1, now=t0)).admitted
    # Debiting past the reservation charges it all and holds nothing more.
    await store.debit(reservation, 40, now=t0)
    refused = await store.admit("k", limits, 1, now=t0)
    assert refused.remaining_tokens == 0


async def test_settle_happens_exactly_once(store: StateStore, t0: float) -> None:
    limits = Limits(tpm=1000, budget_tokens=1000)
    reservation = _reservation(await store.admit("k", limits, 100, now=t0))
    assert await store.settle(reservation, 70, UsageRecord("m", 20, 50), now=t0 + 1)
    assert not await store.settle(reservation, 70, UsageRecord("m", 20, 50), now=t0 + 1)
    usage = (await store.usage("k"))["k"]
    assert (usage["requests"], usage["budget_spent"]) == (1, 70)
    assert not await store.renew(reservation, now=t0 + 1)
    # Debiting a settled reservation charges nothing more.
    assert await store.debit(reservation, 10, now=t0 + 1) == 930


async def test_expired_reservations_stop_counting(make_store: MakeStore, t0: float) -> None:
    store = make_store(reservation_ttl=5.0)
    limits = Limits(tpm=10, max_streams=1)
    crashed = _reservation(await store.admit("k", limits, 10, now=t0))
    assert crashed.expires_at == pytest.approx(t0 + 5)
    assert (await store.admit("k", limits, 1, now=t0 + 1)).reason == "too_many_streams"
    alive = _reservation(await store.admit("k", limits, 10, now=t0 + 5.5))

    assert await store.renew(alive, now=t0 + 9)  # now lapses at t0 + 14
    assert not (await store.admit("k", limits, 1, now=t0 + 12)).admitted
    assert (await store.admit("k", limits, 1, now=t0 + 14.5)).admitted
    assert not await store.renew(alive, now=t0 + 15)
    # A late settle of a lapsed lease still charges and counts, once.
    assert await store.settle(crashed, 7, UsageRecord("m", 2, 5), now=t0 + 20)
    assert not await store.settle(crashed, 7, UsageRecord("m", 2, 5), now=t0 + 20)
    assert (await store.usage("k"))["k"]["budget_spent"] == 7


async def test_usage_totals_by_model_and_day(store: StateStore, t0: float) -> None:
    async def request(model: str, prompt: int, completion: int, at: float) -> None:
        reservation = _reservation(await store.admit("k", Limits(), 10, now=at))
        await store.settle(
            reservation, prompt + completion, UsageRecord(model, prompt, completion), now=at
        )

    await request("gpt", 10, 20, t0 - 100 * DAY)  # past the 90 days kept
    await request("gpt", 1, 2, t0)
    await request("claude", 3, 4, t0)
    await request("gpt", 5, 6, t0 + DAY)
    _reservation(await store.admit("other", Limits(), 1, now=t0))

    usage = await store.usage()
    assert set(usage) == {"k", "other"}
    k = usage["k"]
    assert (k["requests"], k["prompt_tokens"], k["completion_tokens"]) == (4, 19, 32)
    assert k["by_model"] == {
        "claude": {"requests": 1, "prompt_tokens": 3, "completion_tokens": 4},
        "gpt": {"requests": 3, "prompt_tokens": 16, "completion_tokens": 28},
    }
    assert k["by_day"] == {
        utc_day(t0): {"requests": 2, "prompt_tokens": 4, "completion_tokens": 6},
        utc_day(t0 + DAY): {"requests": 1, "prompt_tokens": 5, "completion_tokens": 6},
    }
    assert k["remaining_budget"] is None
    assert usage["other"]["requests"] == 0
    assert (await store.usage("nobody"))["nobody"]["requests"] == 0


async def test_admission_carries_openai_header_values(store: StateStore, t0: float) -> None:
    limits = Limits(rpm=2, tpm=100)
    admitted = await store.admit("k", limits, 10, now=t0)
    assert ratelimit_headers(admitted) == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "90",
        "x-ratelimit-reset-tokens": "0ms",
    }
    await store.settle(_reservation(admitted), 10, UsageRecord("m"), now=t0)
    await store.admit("k", limits, 10, now=t0 + 30)
    refused = await store.admit("k", limits, 10, now=t0 + 45)
    headers = ratelimit_headers(refused)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "15s"
    assert headers["x-ratelimit-remaining-tokens"] == "80"
    assert headers["retry-after"] == "15"
    assert headers["retry-after-ms"] == "15000"
    assert ratelimit_headers(await store.admit("u", Limits(), 1, now=t0)) == {}


async def test_queued_debits_and_settle_charge_exactly_what_was_sent(store: StateStore) -> None:
    # The path a streamed reply takes: debits within its reservation and the settle
    # are queued (no answer awaited); ``usage`` sees them applied once.
    limits = Limits(tpm=10_000, max_streams=2, budget_tokens=1_000)
    reservation = _reservation(await store.admit("k", limits, 200))
    for _ in range(3):
        store.debit_soon(reservation, 16)
    store.settle_soon(reservation, 50, UsageRecord("m", prompt_tokens=10, completion_tokens=40))
    store.settle_soon(reservation, 50, UsageRecord("m", prompt_tokens=10, completion_tokens=40))
    usage = (await store.usage("k"))["k"]
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (1, 10, 40)
    assert usage["budget_spent"] == 50
    assert usage["remaining_budget"] == 950
    # The lease went with the settle: both streams are free again.
    for _ in range(2):
        assert (await store.admit("k", limits, 100)).admitted


async def test_a_queued_debit_then_an_awaited_one_charge_both(store: StateStore) -> None:
    limits = Limits(budget_tokens=100)
    reservation = _reservation(await store.admit("k", limits, 20))
    store.debit_soon(reservation, 16)
    # Past its reservation the reply waits for the answer, which counts the queued 16.
    assert await store.debit(reservation, 16) == 68
    store.settle_soon(reservation, 40, UsageRecord("m", completion_tokens=40))
    assert (await store.usage("k"))["k"]["budget_spent"] == 40


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0ms"),
        (0.02, "20ms"),
        (0.9999, "1s"),
        (1, "1s"),
        (1.5, "1.5s"),
        (360, "6m0s"),
        (90.25, "1m30.25s"),
        (-3, "0ms"),
    ],
)
def test_format_reset(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


def _format_reset_by_rounding(seconds: float) -> str:
    """The first definition of ``format_reset`` (rounding to 6 digits, then up)."""
    millis = max(0, math.ceil(round(seconds * 1000, 6)))
    if millis < 1000:
        return f"{millis}ms"
    minutes, millis = divmod(millis, 60_000)
    secs = f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def test_format_reset_writes_what_rounding_first_wrote() -> None:
    """The faster arithmetic (it runs on every stream's first-token path) gives the
    text of the first definition, float noise included, over a dense grid."""
    grid = [k / 10_000 for k in range(0, 4_000_000, 7)] + [0.02, 0.0200000001, 59.9999, 1e-9]
    for seconds in grid:
        assert format_reset(seconds) == _format_reset_by_rounding(seconds), seconds
