"""The watchdog of one stream: keep-alive pings and the idle timeout on one timer.

It is never touched per token. When it fires it sends a ping if nothing was
written for ``heartbeat`` seconds and enforces the idle timeout between provider
events, then sets itself again for the next deadline. The relay tells it when the
last event came (:attr:`Watchdog.last_event`) by assignment, which costs nothing.
A reply that outlives its response (a background reply) keeps only the idle
timeout: :meth:`Watchdog.detach` drops the stream and its pings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.errors import UpstreamTimeout
from gateway.streaming.writer import ClientGone, EventStream, SendTimeout


class Watchdog:
    """Pings and the idle timeout of one :class:`EventStream`."""

    __slots__ = ("_cut", "_handle", "_heartbeat", "_loop", "_ping", "_stream", "idle", "last_event")

    def __init__(
        self, stream: EventStream | None, *, heartbeat: float, cut: Callable[[Exception], None]
    ) -> None:
        self._stream = stream
        self._heartbeat = heartbeat
        self._cut = cut
        self._loop = asyncio.get_running_loop()
        #: Loop time of the last provider event (the start, before the first one).
        self.last_event = self._loop.time()
        #: The idle timeout, once the first event came.
        self.idle: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._ping: asyncio.Task[None] | None = None

    def arm(self) -> None:
        """Set the timer for the next deadline."""
        stream = self._stream
        last_write = stream.last_write if stream is not None and stream.opened else self.last_event
        due = last_write + self._heartbeat
        if self.idle is not None:
            due = min(due, self.last_event + self.idle)
        self.disarm()
        self._handle = self._loop.call_at(due, self._tick)

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def detach(self) -> None:
        """No more pings: the stream is gone, the reply goes on."""
        self._stream = None
        if self._ping is not None:
            self._ping.cancel()

    def stop(self) -> None:
        """Disarm and cancel a ping in flight."""
        self.disarm()
        if self._ping is not None:
            self._ping.cancel()

    def _tick(self) -> None:
        self._handle = None
        now = self._loop.time()
        if self.idle is not None and now - self.last_event >= self.idle:
            self._cut(UpstreamTimeout(f"upstream sent nothing for {self.idle:g} s (idle timeout)"))
            return
        stream = self._stream
        if stream is None:
            self.arm()
            return
        last_write = stream.last_write if stream.opened else self.last_event
        if now - last_write >= self._heartbeat and (self._ping is None or self._ping.done()):
            self._ping = asyncio.ensure_future(self._send_ping())
            idle_due = self.last_event + self.idle if self.idle is not None else now + 1e9
            self._handle = self._loop.call_at(min(now + self._heartbeat, idle_due), self._tick)
            return
        self.arm()

    async def _send_ping(self) -> None:
        if self._stream is None:
            return
        try:
            await self._stream.ping()
        except SendTimeout as exc:
            self._cut(exc)
        except ClientGone:
            pass  # aiohttp cancels the handler when the connection is lost
