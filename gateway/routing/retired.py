"""Routing: providers a reload replaced, closed once no reply uses them any more.

A reply holds its routes (and so their providers) from routing to its end, so a
reload cannot close the old providers at once: they wait here, and each
:meth:`Retired.sweep` (the app state calls it whenever a reply ends or a
handler lets go of its routes) closes those no reply references. Whatever is
still waiting at shutdown is closed then, after the drain.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import structlog

from providers.base import Provider

log = structlog.get_logger("tokenpipe.routing")


async def close_provider(provider: Provider) -> None:
    """``provider.aclose()``, logging (not raising) a failure."""
    try:
        await provider.aclose()
    except Exception:
        log.exception("provider_close_failed", provider=type(provider).__name__)


class Retired:
    """Providers no longer routed to, each closed when the last reply using it ends."""

    def __init__(self) -> None:
        self._waiting: list[Provider] = []
        self._closing: set[asyncio.Task[None]] = set()

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, providers: Iterable[Provider]) -> None:
        """Retire ``providers``; they are closed by a later :meth:`sweep`."""
        self._waiting.extend(providers)

    def sweep(self, in_use: Callable[[], set[int]]) -> None:
        """Close (in the background) every waiting provider whose ``id`` ``in_use`` omits."""
        if not self._waiting:
            return
        used = in_use()
        done = [p for p in self._waiting if id(p) not in used]
        if not done:
            return
        self._waiting = [p for p in self._waiting if id(p) in used]
        for provider in done:
            log.info("provider_closed", provider=type(provider).__name__, reason="replaced")
            task = asyncio.ensure_future(close_provider(provider))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Close whatever still waits and wait for closes in progress (at shutdown)."""
        waiting, self._waiting = self._waiting, []
        await asyncio.gather(*self._closing, *(close_provider(p) for p in waiting))
