"""Typed application state, stored under one ``web.AppKey``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from config import Settings
from gateway.registry import Registry
from providers.tokenizer import Tokenizer

if TYPE_CHECKING:
    from gateway.reply import Reply


@dataclass(slots=True)
class GatewayState:
    """What handlers share; built at start-up by ``gateway.app``."""

    settings: Settings
    registry: Registry
    tokenizer: Tokenizer
    #: Unix time the gateway started (the ``created`` of its models).
    started_at: int = field(default_factory=lambda: int(time.time()))
    #: Streams (and non-streaming replies) in flight.
    active: int = 0
    #: Set on SIGTERM/SIGINT: new requests are refused, in-flight ones finish.
    draining: bool = False
    #: Replies in flight, by the task that produces them (cancelled at the drain deadline).
    inflight: dict[asyncio.Task[Any], Reply] = field(default_factory=dict)
    #: Set whenever no reply is in flight.
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    def enter(self) -> None:
        """A reply starts."""
        self.active += 1
        self.idle.clear()

    def leave(self) -> None:
        """A reply ended, however it ended."""
        self.active -= 1
        if not self.active:
            self.idle.set()

    async def wait_idle(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for no reply to be in flight; True if none is."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.idle.wait()
        return not self.active

    def cut_inflight(self) -> int:
        """Cut every reply still in flight (the drain time ran out); returns how many."""
        for task, reply in list(self.inflight.items()):
            reply.shutting_down = True
            task.cancel()
        return len(self.inflight)


STATE = web.AppKey("state", GatewayState)
SETTINGS = web.AppKey("settings", Settings)
