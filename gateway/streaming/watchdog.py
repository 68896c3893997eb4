"""The watchdog of one stream: keep-alive pings and the idle timeout on one timer.

It is never touched per token. When it fires it sends a ping if nothing was
written for ``heartbeat`` seconds and enforces the idle timeout between provider
events, then sets itself again for the next deadline. The relay tells it when the
last event came (:attr:`Watchdog.last_event`) by assignment, which costs nothing.
A reply that outlives its response (a background reply) keeps only the idle
timeout: :meth:`Watchdog.detach` drops the stream and its pings.

The watchdogs of a gateway share one :class:`Ticker`: one loop timer for all those
due in the same slot of :data:`RESOLUTION` seconds, not one timer per stream (a
timer is about 550 bytes an open stream; a slot's list entry is 8). A ping or an
idle timeout is therefore up to that much late, never early.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from gateway.errors import UpstreamTimeout
from gateway.streaming.writer import ClientGone, EventStream, SendTimeout

#: The slot of a :class:`Ticker`, in seconds.
RESOLUTION = 0.05


class Ticker:
    """The timers of many watchdogs: one loop timer per slot that has any due."""

    __slots__ = ("_loop", "_resolution", "_slots", "_timers")

    def __init__(self, resolution: float = RESOLUTION) -> None:
        self._resolution = resolution
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The watchdogs due in each slot (a dict: ordered, and removal is O(1)).
        self._slots: dict[int, dict[Watchdog, None]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def move(self, dog: Watchdog, slot: int | None, when: float) -> int:
        """:meth:`add`, from ``slot`` where ``dog`` is due now (if any): nothing to do
        when ``when`` falls in the same slot (a lone stream re-armed in the same slot
        would otherwise cancel its slot's loop timer and set a new one)."""
        if slot is not None:
            if math.ceil(when / self._resolution) == slot:
                return slot
            self.remove(dog, slot)
        return self.add(dog, when)

    def add(self, dog: Watchdog, when: float) -> int:
        """Tick ``dog`` at the end of the slot holding loop time ``when``; the slot."""
        slot = math.ceil(when / self._resolution)
        dogs = self._slots.get(slot)
        if dogs is None:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            dogs = self._slots[slot] = {}
            self._timers[slot] = self._loop.call_at(slot * self._resolution, self._fire, slot)
        dogs[dog] = None
        return slot

    def remove(self, dog: Watchdog, slot: int) -> None:
        dogs = self._slots.get(slot)
        if dogs is None:
            return
        dogs.pop(dog, None)
        if not dogs:  # nothing else due then: no timer either
            del self._slots[slot]
            self._timers.pop(slot).cancel()

    def __len__(self) -> int:
        """Slots with a timer set."""
        return len(self._slots)

    def _fire(self, slot: int) -> None:
        self._timers.pop(slot, None)
        for dog in self._slots.pop(slot, {}):
            dog.due = None
            dog.tick()


class Watchdog:
    """Pings and the idle timeout of one :class:`EventStream`."""

    __slots__ = (
        "_cut",
        "_fired",
        "_first_due",
        "_first_task",
        "_heartbeat",
        "_loop",
        "_ping",
        "_stream",
        "_ticker",
        "due",
        "idle",
        "last_event",
    )

    def __init__(
        self,
        stream: EventStream | None,
        *,
        heartbeat: float,
        cut: Callable[[Exception], None],
        ticker: Ticker,
    ) -> None:
        self._stream = stream
        self._heartbeat = heartbeat
        self._cut = cut
        self._ticker = ticker
        self._loop = asyncio.get_running_loop()
        #: Loop time of the last provider event (the start, before the first one).
        self.last_event = self._loop.time()
        #: The idle timeout, once the first event came.
        self.idle: float | None = None
        #: The ticker's slot this watchdog is due in, while armed.
        self.due: int | None = None
        self._ping: asyncio.Task[None] | None = None
        #: An attempt's first-token deadline (loop time) and the task it cancels.
        self._first_due: float | None = None
        self._first_task: asyncio.Task[object] | None = None
        self._fired = False

    def arm(self) -> None:
        """Set the timer for the next deadline."""
        stream = self._stream
        last_write = stream.last_write if stream is not None and stream.opened else self.last_event
        self.due = self._ticker.move(self, self.due, self._next_due(last_write + self._heartbeat))

    def _next_due(self, ping_due: float) -> float:
        """The earliest of ``ping_due``, the idle timeout and the first-token deadline."""
        due = ping_due
        if self.idle is not None:
            due = min(due, self.last_event + self.idle)
        if self._first_due is not None:
            due = min(due, self._first_due)
        return due

    # The first-token deadline (``gateway.routing.attempts.Deadline``): on the
    # shared ticker, not an ``asyncio.timeout`` of its own for each waiting stream
    # (a timer, a Timeout and a copied context: about 450 bytes, while it waits).

    def set(self, seconds: float) -> None:
        """Cancel the current task ``seconds`` from now (the attempt times out)."""
        self._first_task = asyncio.current_task()
        self._first_due = self._loop.time() + seconds
        self._fired = False
        self.arm()

    def clear(self) -> bool:
        """Stop the first-token deadline; whether it fired."""
        fired, self._fired = self._fired, False
        self._first_due = self._first_task = None
        return fired

    def disarm(self) -> None:
        if self.due is not None:
            self._ticker.remove(self, self.due)
            self.due = None

    def attach(self, stream: EventStream) -> None:
        """Ping ``stream`` (a watchdog is made before its stream, and armed after)."""
        self._stream = stream

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

    def tick(self) -> None:
        """The ticker's call, when due."""
        now = self._loop.time()
        if self._first_due is not None and now >= self._first_due:
            self._fired = True
            self._first_due = None
            if self._first_task is not None:
                self._first_task.cancel()
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
            self.due = self._ticker.add(self, self._next_due(now + self._heartbeat))
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
