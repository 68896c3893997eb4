"""The Redis client of the state store and the reply log: redis-py's asyncio client,
its commands packed by hiredis (C).

redis-py parses replies with hiredis when it is installed, but its asyncio
``Connection.pack_command`` stays pure Python: for an admission (``EVALSHA`` with 4
keys and 9 arguments) it was most of the client's CPU, which a stream's first token
waits behind. Measured in process (``RedisStore.admit`` in a loop against a local
redis-server, CPU per call): 226-270 us with neither, 198-207 us with hiredis
parsing, and 175-187 us with hiredis packing too (see docs/benchmarks.md, session 8).
The bytes are the same (``tests/gateway/test_redis_client.py``).
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)


class _HiredisPacking(AbstractConnection):
    """``pack_command`` in C; the rest is redis-py's."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str):
            first = first.encode()
        if b" " in first:  # "SCRIPT LOAD", "CLIENT SETINFO": sent as separate words
            args = (*first.split(), *args[1:])
        return [hiredis.pack_command(args)]


class HiredisConnection(_HiredisPacking, Connection):
    """A TCP connection."""


class HiredisSSLConnection(_HiredisPacking, SSLConnection):
    """A TLS connection (``rediss://``)."""


class HiredisUnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    """A Unix socket connection (``unix://``)."""


_PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: HiredisConnection,
    SSLConnection: HiredisSSLConnection,
    UnixDomainSocketConnection: HiredisUnixConnection,
}


def redis_client(url: str, **options: Any) -> Redis:
    """``Redis.from_url(url, **options)``, its connections packing with hiredis."""
    client: Redis = Redis.from_url(url, **options)
    # The kind of connection the URL chose is kept; one of another kind is left as it is.
    pool = client.connection_pool
    pool.connection_class = _PACKED.get(pool.connection_class, pool.connection_class)
    return client
