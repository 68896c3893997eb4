"""Typed application state, stored under one ``web.AppKey``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from config import Settings
from gateway.admission.gate import Gate
from gateway.admission.keys import KeyRing
from gateway.observability.live_stats import LiveStats
from gateway.observability.metrics import Metrics
from gateway.routing.registry import Registry, Route
from gateway.routing.retired import Retired
from gateway.streaming.watchdog import Ticker
from providers.support.tokenizer import Tokenizer

if TYPE_CHECKING:
    from gateway.streaming.record import ReplyRecord
    from gateway.streaming.replylog import ReplyLogStore


@dataclass(slots=True)
class GatewayState:
    """What handlers share; built at start-up by ``gateway.app``."""

    settings: Settings
    registry: Registry
    tokenizer: Tokenizer
    gate: Gate
    metrics: Metrics
    live: LiveStats
    #: The logs of streamed and background replies (resume, cancel).
    reply_logs: ReplyLogStore
    #: Unix time the gateway started (the ``created`` of its models).
    started_at: int = field(default_factory=lambda: int(time.time()))
    #: Set on SIGTERM/SIGINT: new requests are refused, in-flight ones finish.
    draining: bool = False
    #: Replies in flight, by the task that produces them (cancelled at the drain deadline).
    inflight: dict[asyncio.Task[object], ReplyRecord] = field(default_factory=dict)
    #: Set whenever no reply is in flight.
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    #: The timers of every stream's watchdog (pings, idle timeouts).
    ticker: Ticker = field(default_factory=Ticker)
    #: Providers a reload replaced, closed once no reply uses them.
    retired: Retired = field(default_factory=Retired)
    #: Routes handlers resolved and hold until their reply is tracked (see ``holding``).
    _held: dict[int, list[Route]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def active(self) -> int:
        """Streams (and non-streaming replies) in flight."""
        return len(self.inflight)

    # ``track`` and ``holding`` return small classes, not generator-based context
    # managers: each open stream holds one of each (about 300 bytes less apiece).

    def track(self, record: ReplyRecord, task: asyncio.Task[Any] | None = None) -> _Tracking:
        """Count ``record`` as in flight, produced by ``task`` (the current one by
        default), while inside."""
        return _Tracking(self, record, task)

    def holding(self) -> _Holding:
        """A list for the routes a handler resolves: their providers stay open while inside.

        This covers a reply's routes before :meth:`track` does (admission, the reply
        log's creation) and for non-tracked failures.
        """
        return _Holding(self)

    def _release(self, held: list[Route]) -> None:
        del self._held[id(held)]
        self.retired.sweep(self.providers_in_use)

    def providers_in_use(self) -> set[int]:
        """The ids of the providers some reply in flight (or being admitted) may call."""
        used = {id(r.provider) for record in self.inflight.values() for r in record.routes}
        used.update(id(r.provider) for routes in self._held.values() for r in routes)
        return used

    def reconfigure(self, settings: Settings, registry: Registry, ring: KeyRing) -> None:
        """Serve new requests with these (a reload); replies in flight keep their routes.

        Providers of the old registry that ``registry`` does not reuse are closed once
        no reply uses them.
        """
        kept = {id(p) for p in registry.providers()}
        self.retired.add(p for p in self.registry.providers() if id(p) not in kept)
        self.settings = settings
        self.registry = registry
        self.gate.ring = ring  # the store (limits, usage) is kept
        self.retired.sweep(self.providers_in_use)

    async def wait_idle(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for no reply to be in flight; True if none is."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.idle.wait()
        return not self.active

    def cut_inflight(self) -> int:
        """Cut every reply still in flight (the drain time ran out); returns how many."""
        for task, record in list(self.inflight.items()):
            record.shutting_down = True
            task.cancel()
        return len(self.inflight)


STATE = web.AppKey("state", GatewayState)


class _Tracking:
    """``GatewayState.track``."""

    __slots__ = ("_record", "_state", "_task")

    def __init__(
        self, state: GatewayState, record: ReplyRecord, task: asyncio.Task[Any] | None
    ) -> None:
        self._state = state
        self._record = record
        self._task = task

    def __enter__(self) -> None:
        task = self._task or asyncio.current_task()
        assert task is not None
        self._task = task
        self._state.inflight[task] = self._record
        self._state.idle.clear()

    def __exit__(self, *exc_info: object) -> None:
        state = self._state
        assert self._task is not None
        del state.inflight[self._task]
        if not state.inflight:
            state.idle.set()


class _Holding:
    """``GatewayState.holding``."""

    __slots__ = ("_held", "_state")

    def __init__(self, state: GatewayState) -> None:
        self._state = state
        self._held: list[Route] = []

    def __enter__(self) -> list[Route]:
        self._state._held[id(self._held)] = self._held
        return self._held

    def __exit__(self, *exc_info: object) -> None:
        # Released one loop step later: a background reply's producer task, created
        # just before the handler returned, enters track() in its first step, and
        # call_soon callbacks run in order.
        asyncio.get_running_loop().call_soon(self._state._release, self._held)
