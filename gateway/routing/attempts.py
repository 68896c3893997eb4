"""Getting a reply started: retries on the same upstream, then fallbacks.

Everything here happens before the first token reaches the client, so trying
again is invisible to it. A failure is retried when the provider error says it
may help (refused, reset, 429, 5xx, first-token timeout), with exponential
backoff that honours ``Retry-After``; then each fallback is tried in order. When
all fail, the most telling error is raised.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import structlog

from gateway.routing.registry import Route
from providers.base import ChatRequest
from providers.errors import (
    InvalidOptions,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from providers.events import StreamEvent

log = structlog.get_logger("tokenpipe.attempts")

#: First retry delay; doubled per attempt, with jitter, capped.
BACKOFF_BASE = 0.2
BACKOFF_CAP = 4.0
#: A ``Retry-After`` longer than this is not waited for: the next fallback is tried,
#: or the client is told to come back.
MAX_RETRY_AFTER_WAIT = 5.0


@dataclass(slots=True)
class Opened:
    """A stream whose first event has arrived."""

    route: Route
    first: StreamEvent
    events: AsyncIterator[StreamEvent]


async def close_events(events: AsyncIterator[StreamEvent]) -> None:
    """Close a provider's iterator so it releases its upstream."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


def _backoff(attempt: int, exc: ProviderError) -> float | None:
    """Seconds to wait before retrying, or None when retrying should not be waited for."""
    if isinstance(exc, ProviderRateLimited) and exc.retry_after is not None:
        return exc.retry_after if exc.retry_after <= MAX_RETRY_AFTER_WAIT else None
    delay: float = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)
    return delay * (0.5 + random.random() / 2)


def _rank(exc: ProviderError) -> int:
    """Which failure to report when every attempt failed: the most actionable."""
    order = (ProviderBadRequest, ProviderRateLimited, ProviderTimeout)
    for rank, kind in enumerate(order):
        if isinstance(exc, kind):
            return rank
    return len(order)


async def _first_event(route: Route, request: ChatRequest) -> Opened:
    events = route.provider.stream(request)
    try:
        async with asyncio.timeout(route.config.timeouts.first_token):
            first = await anext(events)
    except TimeoutError:
        await close_events(events)
        raise ProviderTimeout(
            f"upstream '{route.name}' sent no token within {route.config.timeouts.first_token:g} s"
        ) from None
    except StopAsyncIteration:
        raise ProviderUnavailable(f"upstream '{route.name}' ended without a reply") from None
    except BaseException:
        await close_events(events)
        raise
    return Opened(route=route, first=first, events=events)


#: Told each attempt's route and outcome: ``ok``, ``retry``, ``fallback``, ``error``.
AttemptObserver = Callable[[str, str], None]


def _ignore(route: str, outcome: str) -> None:
    return None


async def open_stream(
    routes: list[Route],
    build_request: Callable[[Route], ChatRequest],
    on_attempt: AttemptObserver = _ignore,
) -> Opened:
    """Start a reply on the first route that delivers a first event.

    Raises the most telling :class:`ProviderError` when every attempt failed.
    """
    failures: list[ProviderError] = []
    for route in routes:
        request = build_request(route)
        for attempt in range(route.config.retries + 1):
            try:
                opened = await _first_event(route, request)
            except InvalidOptions:
                raise  # the client's own options: no upstream was asked, none will help
            except ProviderError as exc:
                failures.append(exc)
                log.warning(
                    "upstream_attempt_failed",
                    route=route.name,
                    attempt=attempt + 1,
                    error=type(exc).__name__,
                    status=exc.status,
                    detail=exc.message,
                )
                if isinstance(exc, ProviderBadRequest):
                    on_attempt(route.name, "error")
                    raise  # the request itself is wrong: no upstream will take it
                delay = None
                if exc.retryable and attempt < route.config.retries:
                    delay = _backoff(attempt, exc)
                if delay is None:
                    on_attempt(route.name, "fallback" if route is not routes[-1] else "error")
                    break
                on_attempt(route.name, "retry")
                await asyncio.sleep(delay)
                continue
            on_attempt(route.name, "ok")
            if attempt or route is not routes[0]:
                log.info("upstream_attempt_succeeded", route=route.name, attempt=attempt + 1)
            return opened
    raise min(failures, key=_rank)
