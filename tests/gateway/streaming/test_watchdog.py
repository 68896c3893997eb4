"""The watchdogs' shared ticker: one timer per slot, never early, nothing left behind."""

from __future__ import annotations

import asyncio

from gateway.errors import UpstreamTimeout
from gateway.streaming.watchdog import Ticker, Watchdog


def idle_dog(ticker: Ticker, cuts: list[tuple[float, Exception]], idle: float) -> Watchdog:
    loop = asyncio.get_running_loop()
    dog = Watchdog(
        None, heartbeat=60.0, cut=lambda exc: cuts.append((loop.time(), exc)), ticker=ticker
    )
    dog.idle = idle
    return dog


async def test_an_idle_timeout_fires_through_the_ticker_and_never_early() -> None:
    ticker = Ticker(resolution=0.05)
    cuts: list[tuple[float, Exception]] = []
    dog = idle_dog(ticker, cuts, idle=0.12)
    dog.arm()
    async with asyncio.timeout(10):
        while not cuts:
            await asyncio.sleep(0.01)
    at, exc = cuts[0]
    assert isinstance(exc, UpstreamTimeout)
    assert at - dog.last_event >= 0.12
    assert len(ticker) == 0


async def test_watchdogs_due_in_one_slot_share_one_timer() -> None:
    ticker = Ticker(resolution=10.0)
    cuts: list[tuple[float, Exception]] = []
    dogs = [idle_dog(ticker, cuts, idle=5.0) for _ in range(100)]
    for dog in dogs:
        dog.arm()
    assert len(ticker) <= 2  # the starts may straddle a slot's edge
    for dog in dogs:
        dog.stop()
    assert len(ticker) == 0
    assert cuts == []


async def test_a_finished_stream_leaves_nothing_in_the_ticker() -> None:
    """A disarmed watchdog leaves the ticker at once: nothing holds a finished
    stream until its slot comes."""
    ticker = Ticker(resolution=0.05)
    cuts: list[tuple[float, Exception]] = []
    dog = idle_dog(ticker, cuts, idle=30.0)
    dog.arm()
    dog.arm()  # re-armed: still one entry
    assert len(ticker) == 1
    dog.disarm()
    assert len(ticker) == 0
    await asyncio.sleep(0.1)
    assert cuts == []


async def test_a_first_token_deadline_cancels_its_task_and_says_it_fired() -> None:
    """The watchdog as an attempt's first-token deadline (``attempts.Deadline``): on
    the shared ticker, never early; the task it cancelled is left uncancelled."""
    ticker = Ticker(resolution=0.05)
    dog = Watchdog(None, heartbeat=60.0, cut=lambda exc: None, ticker=ticker)
    loop = asyncio.get_running_loop()
    waited: list[float] = []

    async def attempt() -> bool:
        dog.set(0.12)
        started = loop.time()
        try:
            await loop.create_future()  # an upstream that never answers
        except asyncio.CancelledError:
            waited.append(loop.time() - started)
            task = asyncio.current_task()
            assert task is not None
            return dog.clear() and task.uncancel() == 0
        return False

    task = asyncio.create_task(attempt())
    async with asyncio.timeout(10):
        assert await task
    assert waited[0] >= 0.12
    assert not task.cancelled()
    dog.stop()
    assert len(ticker) == 0


async def test_a_cleared_first_token_deadline_cancels_nothing() -> None:
    ticker = Ticker(resolution=0.05)
    dog = Watchdog(None, heartbeat=60.0, cut=lambda exc: None, ticker=ticker)

    async def attempt() -> bool:
        dog.set(0.05)
        await asyncio.sleep(0)  # the first event came at once
        fired = dog.clear()
        await asyncio.sleep(0.2)  # past the deadline: nothing cancels this
        return fired

    async with asyncio.timeout(10):
        assert await asyncio.create_task(attempt()) is False
    dog.stop()
    assert len(ticker) == 0


async def test_rearming_in_the_same_slot_keeps_its_timer() -> None:
    """A lone stream re-armed (its first event, its set-up) within one slot keeps the
    slot's loop timer: no cancel and new timer on every stream's first-token path.
    Moved to a later slot, it leaves the first one, and still fires when due."""
    ticker = Ticker(resolution=10.0)
    cuts: list[tuple[float, Exception]] = []
    dog = idle_dog(ticker, cuts, idle=5.0)
    dog.arm()
    timer = ticker._timers[dog.due]  # type: ignore[index]
    dog.last_event += 0.001
    dog.arm()
    assert ticker._timers[dog.due] is timer  # type: ignore[index]
    assert not timer.cancelled()
    first = dog.due
    dog.last_event += 30.0  # a later slot
    dog.arm()
    assert dog.due != first
    assert timer.cancelled()
    assert len(ticker) == 1
    quick = Ticker(resolution=0.05)
    fast = idle_dog(quick, cuts, idle=0.08)
    fast.arm()
    fast.arm()
    async with asyncio.timeout(10):
        while not cuts:
            await asyncio.sleep(0.01)
    assert cuts[0][0] - fast.last_event >= 0.08
    assert len(quick) == 0
    dog.stop()
