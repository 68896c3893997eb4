"""Getting a reply started: retries on the same upstream, then fallbacks.

Everything here happens before the first token reaches the client, so trying
again is invisible to it. A failure is retried when the provider error says it
may help (refused, reset, 429, 5xx, first-token timeout), with exponential
backoff that honours ``Retry-After``; then each fallback is tried in order. When
all fail, the most telling error is raised.

After the first token a failure is visible, so by default it ends the reply. A
route with ``continue_on_fallback`` opts into one more way out
(:func:`continuing`): when its upstream fails or cuts the stream mid-answer, the
next fallback is asked to continue the partial answer (the original messages
plus an assistant message holding the text sent so far), and its events follow
the first upstream's in the same iterator. The relay sees one stream; nothing
is repeated; the usage is then the gateway's own count of the whole reply.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

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
from providers.events import (
    Accepted,
    Finish,
    StreamEvent,
    TextDelta,
    TokenCount,
    ToolCallDelta,
    Usage,
)

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


class Deadline(Protocol):
    """The first-token deadline of an attempt, in the task that waits for it: it
    cancels that task when due. A reply's watchdog is one (its shared ticker: no
    timer of its own for each waiting stream); :class:`_Timer` is the stand-alone."""

    def set(self, seconds: float) -> None:
        """Cancel the current task ``seconds`` from now, unless cleared first."""

    def clear(self) -> bool:
        """Stop it; whether it had fired (the current task was cancelled for it)."""


class _Timer:
    """A :class:`Deadline` on a loop timer of its own."""

    __slots__ = ("_fired", "_handle")

    def __init__(self) -> None:
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False

    def set(self, seconds: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._fired = False
        self._handle = asyncio.get_running_loop().call_later(seconds, self._fire, task)

    def _fire(self, task: asyncio.Task[object]) -> None:
        self._fired = True
        task.cancel()

    def clear(self) -> bool:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        fired, self._fired = self._fired, False
        return fired


async def _first_event(
    route: Route,
    request: ChatRequest,
    deadline: Deadline,
    on_accepted: Callable[[], Awaitable[None]] | None = None,
) -> Opened:
    events = route.provider.stream(request)
    timeout = route.config.timeouts.first_token
    deadline.set(timeout)
    try:
        first = await anext(events)
        while type(first) is Accepted:  # the upstream said yes: no content yet
            if on_accepted is not None:
                await on_accepted()
            first = await anext(events)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        timed_out = deadline.clear() and task is not None and task.uncancel() == 0
        await close_events(events)
        if not timed_out:
            raise
        raise ProviderTimeout(
            f"upstream '{route.name}' sent no token within {timeout:g} s"
        ) from None
    except StopAsyncIteration:
        deadline.clear()
        raise ProviderUnavailable(f"upstream '{route.name}' ended without a reply") from None
    except BaseException:
        deadline.clear()
        await close_events(events)
        raise
    if deadline.clear():  # fired, but the provider took the cancellation and answered
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
    return Opened(route=route, first=first, events=events)


#: Told each attempt's route and outcome: ``ok``, ``retry``, ``fallback``, ``error``.
AttemptObserver = Callable[[str, str], None]


def _ignore(route: str, outcome: str) -> None:
    return None


async def open_stream(
    routes: list[Route],
    build_request: Callable[[Route], ChatRequest],
    on_attempt: AttemptObserver = _ignore,
    *,
    continues: bool = True,
    deadline: Deadline | None = None,
    on_accepted: Callable[[], Awaitable[None]] | None = None,
) -> Opened:
    """Start a reply on the first route that delivers a first event.

    Raises the most telling :class:`ProviderError` when every attempt failed. When
    the requested route (``routes[0]``) has ``continue_on_fallback`` and fallbacks
    remain after the one that answered, the events continue on them
    (:func:`continuing`), unless ``continues`` is off (``continuing`` itself).
    Each attempt's first-token timeout is ``deadline`` (a timer of its own if none).
    ``on_accepted`` is awaited when an attempt's upstream accepts the request
    (:class:`~providers.events.Accepted`), before its first event: once per attempt.
    """
    # One coroutine for every attempt: its frame is held while the upstream works
    # on its first token, and then freed, 1,000 times at once under load.
    failures: list[ProviderError] = []
    if deadline is None:
        deadline = _Timer()
    for route in routes:
        request = build_request(route)
        for attempt in range(route.config.retries + 1):
            try:
                opened = await _first_event(route, request, deadline, on_accepted)
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
            rest = routes[routes.index(route) + 1 :]
            if continues and routes[0].config.continue_on_fallback and rest:
                opened.events = continuing(
                    route, opened.first, opened.events, rest, build_request, on_attempt
                )
            return opened
    raise min(failures, key=_rank)


def continuation_request(request: ChatRequest, partial: str, sent: int) -> ChatRequest:
    """``request`` asking the model to go on from ``partial`` (``sent`` tokens).

    The prefix becomes the last message, an assistant one: an OpenAI-compatible
    server (and the fake provider) then generates what follows it. Nothing else is
    needed, but it relies on the model continuing its own prefix rather than
    answering it; the token limit left is what the first part did not use.
    """
    max_tokens = request.max_tokens - sent if request.max_tokens is not None else None
    messages = [*request.messages, {"role": "assistant", "content": partial}]
    return replace(request, messages=messages, max_tokens=max_tokens)


def _continuation_of(
    build_request: Callable[[Route], ChatRequest], partial: str, sent: int
) -> Callable[[Route], ChatRequest]:
    def build(route: Route) -> ChatRequest:
        return continuation_request(build_request(route), partial, sent)

    return build


async def continuing(
    route: Route,
    first: StreamEvent,
    events: AsyncIterator[StreamEvent],
    fallbacks: list[Route],
    build_request: Callable[[Route], ChatRequest],
    on_attempt: AttemptObserver = _ignore,
) -> AsyncIterator[StreamEvent]:
    """``events`` (those of ``route`` after ``first``), continued on ``fallbacks`` when cut.

    A cut is a retryable :class:`ProviderError` from the iterator, or its end
    without a :class:`Finish`. The next fallbacks are tried in order (with their
    retries), each asked for :func:`continuation_request`; one log line
    ``upstream_continued`` tells which route took over after how many tokens. A
    reply holding a tool call is never continued (half a call cannot be resumed);
    one already at its token limit finishes with ``length``. Once continued, every
    :class:`Usage` and :class:`TokenCount` is dropped: each upstream's count covers
    one part (the second counts the first part as prompt), so the reply record counts
    the whole reply itself, the prompt as the first attempt's. When no fallback can
    continue, the first upstream's error is raised, as without the option.
    """
    remaining = list(fallbacks)
    texts: list[str] = []
    tools = finished = continued = False

    def keep(event: StreamEvent) -> bool:
        """Note what ``event`` adds to the reply; False for a usage to drop."""
        nonlocal tools, finished
        if type(event) is TextDelta:
            texts.append(event.text)
        elif type(event) is ToolCallDelta:
            tools = True
        elif type(event) is Finish:
            finished = True
        elif type(event) is Usage or type(event) is TokenCount:
            return not continued
        return True

    keep(first)  # the caller delivers it
    try:
        while True:
            failure: ProviderError | None = None
            try:
                async for event in events:
                    if keep(event):
                        yield event
            except ProviderError as exc:
                if not exc.retryable:
                    raise
                failure = exc
            if finished:
                if failure is not None:
                    raise failure  # after the finish: nothing to continue, as without
                return
            if failure is None:
                failure = ProviderUnavailable(
                    f"upstream '{route.name}' stream ended without a finish reason"
                )
            if tools or not remaining:
                raise failure
            await close_events(events)
            partial, sent = "".join(texts), len(texts)
            limit = build_request(remaining[0]).max_tokens
            if limit is not None and sent >= limit:
                yield Finish("length")
                return
            build = _continuation_of(build_request, partial, sent)
            try:
                taken = await open_stream(remaining, build, on_attempt, continues=False)
            except ProviderError:
                raise failure from None
            log.warning(
                "upstream_continued",
                route=route.name,
                continued_on=taken.route.name,
                tokens=sent,
                error=type(failure).__name__,
                detail=failure.message,
            )
            remaining = remaining[remaining.index(taken.route) + 1 :]
            route, events, continued = taken.route, taken.events, True
            if keep(taken.first):
                yield taken.first
    finally:
        await close_events(events)
