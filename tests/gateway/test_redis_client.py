"""gateway.redis_client: redis-py's connections, their commands packed by hiredis."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection

from gateway.redis_client import (
    HiredisConnection,
    HiredisSSLConnection,
    HiredisUnixConnection,
    redis_client,
)
from tests.support.redis_server import RedisServer


@pytest.mark.parametrize(
    "command",
    [
        ("EVALSHA", "0123abcd", 4, "tp:{k}:a", "tp:{k}:b", "", 1700000000.25, 7, -3),
        ("SCRIPT LOAD", "return 1"),  # two words: sent as two arguments
        ("CLIENT SETINFO", "LIB-NAME", "redis-py"),
        (b"SET", b"bin\x00ary\r\n", "h\u00e9llo \U0001f642", 12345678901234567890),
        ("XADD", "s", "MAXLEN", "~", 1000, "*", "f", b"v" * 10_000),
    ],
    ids=["evalsha", "script-load", "client-setinfo", "bytes-unicode-bigint", "large-value"],
)
def test_packs_the_bytes_redis_py_packs(command: tuple[Any, ...]) -> None:
    ours = b"".join(HiredisConnection().pack_command(*command))
    theirs = b"".join(Connection().pack_command(*command))
    assert ours == theirs


@pytest.mark.parametrize(
    ("url", "kind", "base"),
    [
        ("redis://127.0.0.1:6390/0", HiredisConnection, Connection),
        ("rediss://127.0.0.1:6390/0", HiredisSSLConnection, SSLConnection),
        ("unix:///tmp/redis.sock", HiredisUnixConnection, UnixDomainSocketConnection),
    ],
)
def test_the_url_still_chooses_the_kind_of_connection(
    url: str, kind: type[Any], base: type[Any]
) -> None:
    pool = redis_client(url).connection_pool
    assert pool.connection_class is kind
    assert issubclass(kind, base)


async def test_a_real_round_trip(redis_server: RedisServer) -> None:
    client = redis_client(redis_server.url, decode_responses=True)
    try:
        script = client.register_script("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}")
        assert await script(keys=["h\u00e9"], args=["x y", 41]) == ["h\u00e9", "x y", 42]
        assert await client.set("k", "v") is True
        assert await client.get("k") == "v"
    finally:
        await client.aclose()
