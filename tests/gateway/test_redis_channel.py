"""gateway.redis_channel: the admission's EVALSHA on a connection of its own,
against a real redis-server: replies in order, errors, the handshake, outages."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from gateway.admission.redis_store import RedisStore
from gateway.admission.store import Limits, StoreUnavailable
from gateway.redis_channel import ScriptChannel
from tests.support.redis_server import RedisServer

#: Answers its argument after a write to its key (so the database it ran in shows).
ECHO = "redis.call('SET', KEYS[1], ARGV[1]) return ARGV[1]"
FAIL = "return redis.error_reply('ERR nope')"


def sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


@pytest.fixture
async def loaded(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client: Redis = Redis.from_url(redis_server.url, decode_responses=True)
    for script in (ECHO, FAIL):
        await client.script_load(script)
    yield client
    await client.aclose()


@pytest.mark.parametrize(
    ("url", "served"),
    [
        ("redis://127.0.0.1:6379/0", True),
        ("redis://user:pw@10.0.0.2:6380/3", True),
        ("unix:///run/redis.sock?db=1", True),
        ("rediss://127.0.0.1:6379/0", False),
    ],
)
def test_serves_tcp_and_unix_sockets_not_tls(url: str, served: bool) -> None:
    assert ScriptChannel.serves(url) is served


async def test_pipelined_commands_each_get_their_own_reply(
    redis_server: RedisServer, loaded: Redis
) -> None:
    channel = ScriptChannel(redis_server.url, connect_timeout=1.0)
    try:
        calls = [channel.evalsha(sha(ECHO), [f"k{i}"], [f"v{i}"]) for i in range(200)]
        assert await asyncio.gather(*calls) == [f"v{i}" for i in range(200)]
    finally:
        channel.close()


async def test_an_error_reply_raises_and_the_connection_goes_on(
    redis_server: RedisServer, loaded: Redis
) -> None:
    channel = ScriptChannel(redis_server.url, connect_timeout=1.0)
    try:
        with pytest.raises(ResponseError, match="nope"):
            await channel.evalsha(sha(FAIL), ["k"], [])
        with pytest.raises(ResponseError, match=r"^NOSCRIPT"):
            await channel.evalsha("0" * 40, ["k"], [])
        assert await channel.evalsha(sha(ECHO), ["k"], ["after"]) == "after"
    finally:
        channel.close()


async def test_a_cancelled_wait_leaves_the_next_reply_to_its_own_caller(
    redis_server: RedisServer, loaded: Redis
) -> None:
    """A caller that gives up (its client left) does not shift the replies: the one
    meant for it is dropped, the next caller gets its own."""
    channel = ScriptChannel(redis_server.url, connect_timeout=1.0)
    try:
        assert await channel.evalsha(sha(ECHO), ["k"], ["warm"]) == "warm"
        redis_server.pause()
        try:
            first = asyncio.ensure_future(channel.evalsha(sha(ECHO), ["k"], ["first"]))
            second = asyncio.ensure_future(channel.evalsha(sha(ECHO), ["k"], ["second"]))
            await asyncio.sleep(0.05)
            first.cancel()
        finally:
            redis_server.resume()
        assert await asyncio.wait_for(second, 5) == "second"
        assert first.cancelled()
    finally:
        channel.close()


async def test_password_and_database_come_from_the_url(
    redis_server: RedisServer, loaded: Redis
) -> None:
    await loaded.config_set("requirepass", "s3cret")
    try:
        url = f"redis://:s3cret@127.0.0.1:{redis_server.port}/3"
        channel = ScriptChannel(url, connect_timeout=1.0)
        try:
            assert await channel.evalsha(sha(ECHO), ["where"], ["db3"]) == "db3"
        finally:
            channel.close()
        db3: Redis = Redis.from_url(url, decode_responses=True)
        assert await db3.get("where") == "db3"
        await db3.aclose()
        wrong = ScriptChannel(f"redis://:nope@127.0.0.1:{redis_server.port}/0", connect_timeout=1.0)
        with pytest.raises(ResponseError):
            await wrong.evalsha(sha(ECHO), ["k"], ["x"])
        wrong.close()
    finally:
        admin: Redis = Redis.from_url(
            f"redis://:s3cret@127.0.0.1:{redis_server.port}/0", decode_responses=True
        )
        await admin.config_set("requirepass", "")
        await admin.aclose()


async def test_a_lost_connection_fails_what_was_in_flight_and_the_next_reconnects(
    redis_server: RedisServer, loaded: Redis
) -> None:
    channel = ScriptChannel(redis_server.url, connect_timeout=1.0)
    try:
        assert await channel.evalsha(sha(ECHO), ["k"], ["before"]) == "before"
        redis_server.pause()
        in_flight = asyncio.ensure_future(channel.evalsha(sha(ECHO), ["k"], ["lost"]))
        await asyncio.sleep(0.05)
        redis_server.stop()  # killed while paused: the connection closes unanswered
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(in_flight, 5)
        with pytest.raises(ConnectionRefusedError):  # nothing listens
            await channel.evalsha(sha(ECHO), ["k"], ["refused"])
        redis_server.start()
        with pytest.raises(ResponseError, match=r"^NOSCRIPT"):  # restarted empty
            await channel.evalsha(sha(ECHO), ["k"], ["back"])
    finally:
        channel.close()


async def test_the_store_admits_through_the_channel_and_recovers_after_a_timeout(
    redis_server: RedisServer,
) -> None:
    """A paused Redis times the admission out (503 upstream of here) and the
    connection is dropped with it; once Redis answers again, so does the store."""
    store = RedisStore(redis_server.url, timeout=0.3)
    try:
        assert store._channel is not None
        assert (await store.admit("k", Limits(rpm=10), 0)).admitted
        redis_server.pause()
        try:
            with pytest.raises(StoreUnavailable):
                await store.admit("k", Limits(rpm=10), 0)
        finally:
            redis_server.resume()
        admission = await store.admit("k", Limits(rpm=10), 0)
        assert admission.admitted
        # The one sent while paused ran when Redis woke: counted, as redis-py's was.
        assert admission.remaining_requests in (7, 8)
    finally:
        await store.aclose()
