"""``RedisStore`` against a real redis-server: shared limits, outages, key hygiene."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.admission.redis_store import RedisStore
from gateway.admission.store import Limits, StoreUnavailable, UsageRecord
from tests.support.redis_server import RedisServer

MakeRedisStore = Callable[[], RedisStore]


@pytest.fixture
async def make_store(redis_server: RedisServer) -> AsyncIterator[MakeRedisStore]:
    stores: list[RedisStore] = []

    def make() -> RedisStore:
        stores.append(RedisStore(redis_server.url))
        return stores[-1]

    yield make
    for store in stores:
        await store.aclose()


async def test_two_processes_share_one_rpm(make_store: MakeRedisStore) -> None:
    first, second = make_store(), make_store()
    limits = Limits(rpm=3)
    # now=None: both use the server's clock, as separate gateway processes would.
    results = [await (first if i % 2 else second).admit("k", limits, 0) for i in range(4)]
    assert [r.admitted for r in results] == [True, True, True, False]
    assert results[-1].reason == "rate_limit_requests"
    assert 0 < (results[-1].retry_after or 0) <= 60


async def test_outage_fails_fast_and_recovers(
    make_store: MakeRedisStore, redis_server: RedisServer
) -> None:
    store = make_store()
    assert (await store.admit("k", Limits(rpm=10), 0)).admitted

    redis_server.stop()
    for _ in range(2):  # first the pooled connection drops, then connects are refused
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.admit("k", Limits(rpm=10), 0)
        assert time.monotonic() - started < 2.0

    redis_server.start()  # empty: scripts must be loaded again (EVALSHA fallback)
    admission = await store.admit("k", Limits(rpm=10), 0)
    assert admission.admitted
    assert admission.remaining_requests == 9
    reservation = admission.reservation
    assert reservation is not None
    assert await store.settle(reservation, 5, UsageRecord("m", 2, 3))
    assert (await store.usage())["k"]["requests"] == 1


async def test_every_key_expires_and_shares_one_hash_tag(
    make_store: MakeRedisStore, redis_server: RedisServer
) -> None:
    store = make_store()
    limits = Limits(rpm=5, tpm=1000, max_streams=5, budget_tokens=10_000)
    admission = await store.admit("team-a", limits, 100)
    assert admission.reservation is not None
    await store.debit(admission.reservation, 16)

    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        keys = set(await client.keys("*"))
        assert keys == {"tokenpipe:keys"} | {
            f"tokenpipe:{{team-a}}:{part}" for part in ("st", "req", "tok", "lease", "res")
        }
        for key in keys:
            assert await client.ttl(key) > 0, key
        await store.settle(admission.reservation, 50, UsageRecord("m", 10, 40))
        keys = set(await client.keys("*"))
        assert "tokenpipe:{team-a}:lease" not in keys  # no live lease left: empty zset
        assert {"tokenpipe:{team-a}:ended", "tokenpipe:{team-a}:days"} <= keys
        for key in keys:
            assert await client.ttl(key) > 0, key
    finally:
        await client.aclose()


async def _evalsha_calls(client: Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_hundred_replies_debit_and_settle_in_one_round_trip(
    make_store: MakeRedisStore, redis_server: RedisServer
) -> None:
    """What replies do after admission is batched: one script per key, not per reply."""
    store = make_store()
    limits = Limits(tpm=1_000_000, budget_tokens=1_000_000)
    warm = await store.admit("k", limits, 100)  # the first batch loads the script
    assert warm.reservation is not None
    store.debit_soon(warm.reservation, 1)
    await store.flush()
    reservations = []
    for _ in range(100):
        admission = await store.admit("k", limits, 100)
        assert admission.reservation is not None
        reservations.append(admission.reservation)
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        before = await _evalsha_calls(client)
        for reservation in reservations:
            store.debit_soon(reservation, 16)
            store.debit_soon(reservation, 16)
        for reservation in reservations[:50]:
            store.settle_soon(reservation, 40, UsageRecord("m", 8, 32))
        await store.flush()
        assert await _evalsha_calls(client) - before == 1
    finally:
        await client.aclose()
    usage = (await store.usage("k"))["k"]
    assert usage["requests"] == 50
    assert usage["completion_tokens"] == 50 * 32
    # 50 settled at 40 each, 50 live with 32 debited each, and the warm-up's 1.
    assert usage["budget_spent"] == 50 * 40 + 50 * 32 + 1


async def test_a_reply_is_admitted_and_settled_on_one_connection(
    make_store: MakeRedisStore, redis_server: RedisServer
) -> None:
    """The settle batch rides the admission's connection (``gateway.redis_channel``),
    not redis-py's pool: about 70 us less of the gateway's CPU per reply."""
    store = make_store()
    limits = Limits(rpm=1000, tpm=1_000_000)
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        for round_ in range(4):
            admission = await store.admit("k", limits, 10)
            assert admission.reservation is not None
            store.settle_soon(admission.reservation, 7, UsageRecord("m", 3, 4))
            await store.flush()
            if round_ == 0:  # scripts loaded; redis-py's connection's last command a read
                assert (await store.usage("k"))["k"]["requests"] == 1
        mine = await client.client_id()
        scripts = [
            c for c in await client.client_list() if c["cmd"] == "evalsha" and int(c["id"]) != mine
        ]
        assert len(scripts) == 1, scripts
    finally:
        await client.aclose()
    usage = (await store.usage("k"))["k"]
    assert (usage["requests"], usage["completion_tokens"], usage["budget_spent"]) == (4, 16, 28)


async def test_a_batch_after_redis_restarted_empty_loads_its_script(
    make_store: MakeRedisStore, redis_server: RedisServer
) -> None:
    """Regression guard: on the channel a batch meets NOSCRIPT after an empty restart;
    redis-py loads the script and the settle still lands, once."""
    store = make_store()
    first = await store.admit("k", Limits(rpm=100), 10)
    assert first.reservation is not None
    store.settle_soon(first.reservation, 5, UsageRecord("m", 2, 3))
    await store.flush()
    redis_server.stop()
    redis_server.start()  # empty: no scripts, no counts
    deadline = time.monotonic() + 5
    admission = None
    while admission is None and time.monotonic() < deadline:
        try:  # the first command after the restart may meet the dropped connection
            admission = await store.admit("k", Limits(rpm=100), 10)
        except StoreUnavailable:
            await asyncio.sleep(0.05)
    assert admission is not None
    assert admission.reservation is not None
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await client.script_flush()  # the batch script too, whatever the admit loaded
    finally:
        await client.aclose()
    store.settle_soon(admission.reservation, 9, UsageRecord("m", 4, 5))
    await store.flush()
    usage = (await store.usage("k"))["k"]
    assert (usage["requests"], usage["completion_tokens"], usage["budget_spent"]) == (1, 5, 9)


async def test_settles_queued_while_redis_is_down_land_when_it_returns(
    redis_server: RedisServer,
) -> None:
    """Regression: a settle that failed was lost (logged ``settle_failed``, never retried)."""
    store = RedisStore(redis_server.url, flush_seconds=0.05, timeout=0.3)
    try:
        admission = await store.admit("k", Limits(rpm=100), 10)
        assert admission.reservation is not None
        # The next batch times out on a frozen Redis: the settle stays queued, and
        # the frozen server still runs it once it thaws, so the retry must be a no-op.
        redis_server.pause()
        try:
            store.settle_soon(admission.reservation, 30, UsageRecord("m", 10, 20))
            await store.flush()
        finally:
            redis_server.resume()
        deadline = time.monotonic() + 5
        usage = None
        while time.monotonic() < deadline:
            try:
                usage = (await store.usage("k"))["k"]
            except StoreUnavailable:
                usage = None
            if usage is not None and usage["requests"]:
                break
        assert usage is not None
        assert (usage["requests"], usage["completion_tokens"], usage["budget_spent"]) == (1, 20, 30)
    finally:
        await store.aclose()


async def test_live_leases_are_renewed_and_a_dead_processs_lapse(redis_server: RedisServer) -> None:
    """A reply's lease outlives its TTL while its process lives; a dead process's
    reservation stops counting one TTL after its last renewal (was 10 minutes)."""
    limits = Limits(max_streams=2)
    alive = RedisStore(redis_server.url, reservation_ttl=1.5, renew_seconds=0.3)
    # A process that stopped renewing (it was killed) but is not gone yet.
    dead = RedisStore(redis_server.url, reservation_ttl=1.5, renew_seconds=3600)
    other = RedisStore(redis_server.url, reservation_ttl=1.5, renew_seconds=0.3)
    try:
        assert (await alive.admit("k", limits, 0)).admitted
        assert (await dead.admit("k", limits, 0)).admitted
        assert not (await other.admit("k", limits, 0)).admitted
        await asyncio.sleep(2.5)
        # The dead reservation lapsed; the live one still holds its stream.
        first = await other.admit("k", limits, 0)
        assert first.admitted
        second = await other.admit("k", limits, 0)
        assert not second.admitted
        assert second.reason == "too_many_streams"
    finally:
        for store in (alive, dead, other):
            await store.aclose()


async def test_an_unreachable_redis_is_retried_with_backoff_not_in_a_hot_loop(
    redis_server: RedisServer,
) -> None:
    """Regression: a settle kept for Redis was retried at once, over and over (a
    busy loop that also held a gateway's shutdown for minutes)."""
    store = RedisStore(redis_server.url)
    admission = await store.admit("k", Limits(rpm=100), 10)
    assert admission.reservation is not None
    redis_server.stop()
    started_cpu = time.process_time()
    store.settle_soon(admission.reservation, 30, UsageRecord("m", 10, 20))
    await asyncio.sleep(1.5)
    # Backing off from 0.25 s: a handful of tries, not thousands.
    assert time.process_time() - started_cpu < 0.5
    started = time.monotonic()
    await store.aclose()  # one last try, then done
    assert time.monotonic() - started < 2.0


def test_batches_are_scheduled_on_uvloop(redis_server: RedisServer) -> None:
    """Regression: on uvloop (the gateway's loop) a batch due at once got a plain
    Handle with no ``when()``, and the next debit raised inside the stream
    ("The gateway failed while streaming")."""
    import uvloop

    async def main() -> dict[str, Any]:
        store = RedisStore(redis_server.url)
        try:
            first = await store.admit("k", Limits(budget_tokens=1000), 100)
            other = await store.admit("k", Limits(budget_tokens=1000), 100)
            assert first.reservation is not None
            assert other.reservation is not None
            # In one loop turn: a batch due at once, then a debit rescheduling it.
            store.settle_soon(first.reservation, 0, UsageRecord("m"))
            store.debit_soon(other.reservation, 16)
            store.settle_soon(other.reservation, 20, UsageRecord("m", 4, 16))
            await asyncio.sleep(0.1)
            return (await store.usage("k"))["k"]
        finally:
            await store.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        usage = runner.run(main())
    assert (usage["requests"], usage["budget_spent"]) == (2, 20)
