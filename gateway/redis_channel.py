"""One Redis connection for the admission store's scripts: above all the
admission's ``EVALSHA`` (a stream's first token waits on it) and the batch that
settles the reply after its end (it runs while the client's next request
arrives), packed and parsed by hiredis, pipelined.

Why not redis-py for it: an admission through redis-py's asyncio client costs
about 150 us of Python on the gateway's core (its pool and connection lock, its
retry wrapper, its reader's coroutines), and with Redis the admission runs while
the upstream works on its first token, on the same core: whatever it costs beyond
that window is added to the time to first token. Here a command is one
``hiredis.pack_command`` and one ``transport.write``; replies are parsed in
``data_received`` and handed, in order, to the futures waiting for them (see
docs/benchmarks.md, sessions 10 and 11, for the figures). Everything else (the
key index, usage reads, the reply log) stays on redis-py.

What it does not do, and redis-py does for the rest: TLS (``rediss://``; the
store then runs its scripts through redis-py), RESP3, retries. A command in flight when the
connection drops fails (the store answers 503, or admits a ``fail_open`` key):
an admission may have run, and running it twice would reserve twice; a batch
stays queued and is sent again (a settle already applied is skipped by id). A closed
connection is replaced by the next command. A command that times out aborts the
connection, failing every command still in flight on it (Redis answers in order,
so theirs would come after the late one): the connection is not left holding
waiters for a Redis that stopped answering.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.asyncio.connection import UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError


class _Protocol(asyncio.Protocol):
    """One connection: commands written, their replies handed back in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(encoding="utf-8", replyError=ResponseError)
        #: The futures of the commands sent, oldest first (Redis answers in order).
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports are not asyncio's classes.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Write one packed command; its reply (an error reply raised)."""
        assert self.transport is not None
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self.transport.write(command)
        return future

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(RedisConnectionError(f"redis protocol error: {exc}"))
                self.abort()
                return
            if reply is False:  # the rest of a reply is still to come
                return
            if not waiting:  # nothing asked for it: the connection is out of step
                self._fail(RedisConnectionError("redis sent a reply nobody asked for"))
                self.abort()
                return
            future = waiting.popleft()
            if future.done():  # its waiter gave up (cancelled)
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(RedisConnectionError(f"redis connection lost: {exc or 'closed'}"))

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, collections.deque()
        for future in waiting:
            if not future.done():
                future.set_exception(error)


class ScriptChannel:
    """``EVALSHA`` on a connection of its own; see the module docstring."""

    def __init__(self, url: str, *, connect_timeout: float) -> None:
        options = parse_url(url)
        self._host: str = options.get("host", "localhost")
        self._port: int = options.get("port", 6379)
        self._path: str | None = options.get("path")
        self._db: int = options.get("db", 0)
        self._username: str | None = options.get("username")
        self._password: str | None = options.get("password")
        self._connect_timeout = connect_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None

    @staticmethod
    def serves(url: str) -> bool:
        """Whether ``url`` is one this channel connects to: TCP or a Unix socket, not
        TLS (``rediss://`` is redis-py's alone)."""
        return parse_url(url).get("connection_class") in (None, UnixDomainSocketConnection)

    async def evalsha(self, sha: str, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """Run the loaded script ``sha``; raises ``ResponseError`` (``NOSCRIPT ...``
        when Redis does not have it) or ``ConnectionError``/``OSError``."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connected()
        return await protocol.send(_pack("EVALSHA", sha, len(keys), *keys, *args))

    def reset(self) -> None:
        """Drop the connection (a command timed out): the next one connects anew."""
        if self._protocol is not None:
            self._protocol.abort()
            self._protocol = None

    def close(self) -> None:
        self.reset()
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None

    async def _connected(self) -> _Protocol:
        # One connection attempt at a time, shared by the commands that wait for it.
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(_retrieved)
        protocol = await asyncio.shield(self._connecting)
        self._protocol = protocol
        return protocol

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            if self._path is not None:
                _, protocol = await loop.create_unix_connection(_Protocol, self._path)
            else:
                _, protocol = await loop.create_connection(_Protocol, self._host, self._port)
            try:
                handshake = []
                if self._password is not None:
                    user = () if self._username is None else (self._username,)
                    handshake.append(protocol.send(_pack("AUTH", *user, self._password)))
                if self._db:
                    handshake.append(protocol.send(_pack("SELECT", self._db)))
                for reply in handshake:
                    await reply
            except BaseException:
                protocol.abort()
                raise
        return protocol


def _pack(*parts: str | int) -> bytes:
    """One command in RESP (hiredis, in C)."""
    packed: bytes = hiredis.pack_command(cast(Any, parts))
    return packed


def _retrieved(task: asyncio.Task[_Protocol]) -> None:
    # A failed connection whose waiters all gave up is not an error to report.
    if not task.cancelled():
        task.exception()
