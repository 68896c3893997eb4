"""Typed application state, stored under one ``web.AppKey``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from config import Settings
from gateway.admission.gate import Gate
from gateway.observability.live_stats import LiveStats
from gateway.observability.metrics import Metrics
from gateway.routing.registry import Registry
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

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def active(self) -> int:
        """Streams (and non-streaming replies) in flight."""
        return len(self.inflight)

    @contextlib.contextmanager
    def track(self, record: ReplyRecord) -> Iterator[None]:
        """Count ``record`` as in flight, produced by the current task, while inside."""
        task = asyncio.current_task()
        assert task is not None
        self.inflight[task] = record
        self.idle.clear()
        try:
            yield
        finally:
            del self.inflight[task]
            if not self.inflight:
                self.idle.set()

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
