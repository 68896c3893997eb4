"""``RedisStore`` against a real redis-server: shared limits, outages, key hygiene."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

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
