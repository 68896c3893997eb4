"""The reply record: what one request asked for, what came back, how it ended.

It is the one sink of a reply. The relay and the collector update it through
:meth:`ReplyRecord.apply` (the hot path of text tokens inlined in the relay), and
:meth:`ReplyRecord.end` closes it exactly once: one ``stream_finished`` log event,
then every observer (metrics, usage accounting, the reply log) sees the finished
record. Nothing else logs or counts a reply's end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from gateway.dialects.base import Completed, InboundRequest
from gateway.errors import (
    BadRequest,
    GatewayError,
    LimitsUnavailable,
    QuotaExceeded,
    RateLimited,
    ReplyCancelled,
    ShuttingDown,
    UpstreamTimeout,
    from_provider_error,
)
from gateway.routing.attempts import AttemptObserver, Opened, open_stream
from gateway.routing.registry import Route
from providers.base import ChatRequest
from providers.errors import ProviderError, ProviderUnavailable
from providers.events import (
    Finish,
    FinishReason,
    StreamEvent,
    TextDelta,
    TokenCount,
    ToolCallDelta,
    Usage,
)
from providers.support.tokenizer import Tokenizer

log = structlog.get_logger("tokenpipe.relay")

#: Called once with the finished record.
ReplyObserver = Callable[["ReplyRecord"], None]


def _no_attempt_observer(route: str, outcome: str) -> None:
    return None


class Meter(Protocol):
    """Charges tokens as they are delivered; raises :class:`GatewayError` to cut."""

    #: Delivered tokens at which :meth:`debit` wants to be called next.
    next_debit: int

    async def debit(self, delivered: int) -> None: ...


@dataclass(slots=True, eq=False)
class ReplyRecord:
    """One reply, from admission to its end; see the module docstring."""

    request: InboundRequest
    routes: list[Route]
    request_id: str
    #: The reply's public id (the chunks' ``id``).
    reply_id: str
    tokenizer: Tokenizer
    #: The dialect's name, and the GenAI operation (``chat``).
    dialect: str = "chat_completions"
    operation: str = "chat"
    observers: list[ReplyObserver] = field(default_factory=list)
    #: The API key's name, when keys are on.
    key: str | None = None
    #: A cap on the reply's tokens from admission (what the key's budget has room for).
    max_tokens_limit: int | None = None
    #: Charges delivered tokens during a stream (admission's ticket), when limited.
    meter: Meter | None = None
    #: An admission still in flight while the upstream starts (``Gate.admits_ahead``):
    #: resolves to its response headers, or raises its refusal. The relay
    #: awaits it before the first byte goes out.
    admission: asyncio.Future[dict[str, str]] | None = None
    #: Told each upstream attempt's route and outcome (metrics).
    on_attempt: AttemptObserver = _no_attempt_observer
    started: float = field(default_factory=time.perf_counter)
    created: int = field(default_factory=lambda: int(time.time()))
    route: Route | None = None
    first_token_at: float | None = None
    ended_at: float | None = None
    finish: FinishReason | None = None
    stop_sequence: str | None = None
    usage: Usage | None = None
    #: Why the reply ended: ``stop``, ``length``, ``client_gone``, ``timeout``, ...
    reason: str = "upstream_error"
    error: GatewayError | None = None
    #: Set when the drain time ran out and this reply is being cut.
    shutting_down: bool = False
    #: The text of each token event, in order (their count is the completion tokens sent).
    texts: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: Prompt tokens counted by :meth:`count_prompt` (when the upstream gave none).
    counted_prompt_tokens: int | None = None
    #: Completion tokens counted by the upstream's tokenizer (``usage_count: tokenize``).
    tokenized_completion_tokens: int | None = None

    # Producing.

    def build_request(self, route: Route) -> ChatRequest:
        """The provider-neutral request for one route."""
        req = self.request
        config = route.config
        options = {**config.options, **(req.fake or {})}
        params = req.params
        if config.drop_params:
            params = {k: v for k, v in params.items() if k not in config.drop_params}
        max_tokens = req.max_tokens
        if config.max_tokens_cap is not None:
            max_tokens = min(max_tokens or config.max_tokens_cap, config.max_tokens_cap)
        if self.max_tokens_limit is not None:
            max_tokens = min(max_tokens or self.max_tokens_limit, self.max_tokens_limit)
        return ChatRequest(
            model=config.upstream_name,
            messages=req.messages,
            max_tokens=max_tokens,
            seed=req.seed,
            params=params,
            options=options,
        )

    async def open(self) -> Opened:
        """Start the upstream (retries, fallbacks), and bind the route to the logs.

        Raises :class:`GatewayError` when no route delivered a first event.
        """
        try:
            opened = await open_stream(self.routes, self.build_request, self.on_attempt)
        except ProviderError as exc:
            raise from_provider_error(exc) from None
        self.opened(opened)
        return opened

    def opened(self, opened: Opened) -> None:
        """The route that delivered the first event: the record's, and the logs'."""
        self.route = opened.route
        structlog.contextvars.bind_contextvars(
            route=opened.route.name, provider=opened.route.provider_kind
        )

    def apply(self, event: StreamEvent) -> None:
        """Record one provider event (the relay inlines text tokens instead)."""
        if isinstance(event, TextDelta):
            if not self.texts:
                self.first_token_at = time.perf_counter()
            self.texts.append(event.text)
        elif isinstance(event, ToolCallDelta):
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            call = self.tool_calls.setdefault(
                event.index,
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
            )
            if event.id is not None:
                call["id"] = event.id
            if event.name is not None:
                call["function"]["name"] = event.name
            call["function"]["arguments"] += event.arguments
        elif isinstance(event, Finish):
            self.finish = event.reason
            self.stop_sequence = event.stop_sequence
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, TokenCount):
            self.tokenized_completion_tokens = event.completion_tokens

    def check_complete(self) -> FinishReason:
        """The finish reason; a stream that ended without one was cut."""
        if self.finish is None:
            raise ProviderUnavailable("upstream stream ended without a finish reason")
        return self.finish

    # Counting.

    @property
    def completion_tokens(self) -> int:
        """Token events delivered so far."""
        return len(self.texts)

    def prompt_tokens(self) -> int:
        if self.usage is not None:
            return self.usage.prompt_tokens
        if self.counted_prompt_tokens is None:
            self.counted_prompt_tokens = self.tokenizer.count_messages(self.request.messages)
        return self.counted_prompt_tokens

    async def count_prompt(self) -> None:
        """Count the prompt now, off the event loop when it is large, unless the
        upstream reported usage: call before :meth:`usage_counts` is needed."""
        if self.usage is None and self.counted_prompt_tokens is None:
            self.counted_prompt_tokens = await self.tokenizer.count_messages_off_loop(
                self.request.messages
            )

    def reported_completion_tokens(self) -> int:
        """The upstream's count when it gave one, else the route's ``usage_count``."""
        if self.usage is not None:
            return self.usage.completion_tokens
        counted_by = self.counted_by
        if counted_by == "tokenize" and self.tokenized_completion_tokens is not None:
            return self.tokenized_completion_tokens
        if counted_by == "tiktoken":
            return self.tokenizer.count("".join(self.texts)) if self.texts else 0
        return len(self.texts)

    @property
    def counted_by(self) -> str:
        """How :meth:`reported_completion_tokens` counts: ``upstream``, ``chunks``,
        ``tiktoken``, ``tokenize`` (``chunks`` when the upstream's tokenizer gave no count)."""
        if self.usage is not None:
            return "upstream"
        if self.route is None:
            return "chunks"
        counted = self.route.config.counted_by
        if counted == "upstream":
            return "chunks"
        if counted == "tokenize" and self.tokenized_completion_tokens is None:
            return "chunks"
        return counted

    def usage_counts(self) -> tuple[int, int]:
        """(prompt, completion) tokens, for the dialect's usage frame or body."""
        return self.prompt_tokens(), self.reported_completion_tokens()

    def completed(self) -> Completed:
        """The whole reply, for a non-streaming answer."""
        prompt, completion = self.usage_counts()
        return Completed(
            id=self.reply_id,
            created=self.created,
            model=self.request.model,
            text="".join(self.texts),
            tool_calls=[self.tool_calls[i] for i in sorted(self.tool_calls)],
            finish=self.check_complete(),
            prompt_tokens=prompt,
            completion_tokens=completion,
            stop_sequence=self.stop_sequence,
        )

    # Ending: exactly once.

    def end(self, reason: str, error: GatewayError | None = None) -> None:
        """Close the record: one ``stream_finished`` event, then the observers.

        A second call is ignored: the first reason is the true one.
        """
        if self.ended_at is not None:
            return
        self.ended_at = time.perf_counter()
        self.reason = reason
        self.error = error
        extra: dict[str, Any] = {}
        if error is not None and not self.texts:
            extra["error"] = error.message
        ttft = self.ttft
        log.info(
            "stream_finished",
            reason=reason,
            finish_reason=self.finish,
            route=self.route.name if self.route else None,
            provider=self.route.provider_kind if self.route else None,
            completion_tokens=self.completion_tokens,
            counted_by=self.counted_by,
            key=self.key,
            ttft_ms=round(ttft * 1000, 2) if ttft is not None else None,
            duration_ms=round(self.duration * 1000, 2),
            **extra,
        )
        for observer in self.observers:
            try:
                observer(self)
            except Exception:
                log.exception("reply_observer_failed", observer=repr(observer))

    def end_ok(self) -> None:
        """Close a reply that ran to its finish."""
        self.end(finish_end_reason(self.check_complete()))

    def end_failed(self, exc: GatewayError) -> None:
        """Close a reply that failed with ``exc``."""
        self.end(end_reason(exc), exc)

    @property
    def ttft(self) -> float | None:
        """Seconds from the request to the first token, when one came."""
        if self.first_token_at is None:
            return None
        return self.first_token_at - self.started

    @property
    def duration(self) -> float:
        """Seconds from the request to its end (or now)."""
        end = self.ended_at if self.ended_at is not None else time.perf_counter()
        return end - self.started


def finish_end_reason(finish: FinishReason) -> str:
    """The end reason of a reply that ran to ``finish``."""
    return "length" if finish == "length" else "stop"


def end_reason(exc: BaseException) -> str:
    """The recorded end reason of a reply that failed with ``exc``."""
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, ShuttingDown):
        return "shutdown"
    if isinstance(exc, QuotaExceeded):
        return "insufficient_quota"
    if isinstance(exc, BadRequest | RateLimited | LimitsUnavailable):
        # The client's request (e.g. a fake knob) or the key's limits, not the
        # upstream: a refusal found while the upstream started ahead.
        return "rejected"
    if isinstance(exc, ReplyCancelled):
        return "cancelled"
    return "upstream_error"


def shutdown_error() -> ShuttingDown:
    """The error of a reply cut because the drain time ran out."""
    return ShuttingDown(
        "The server is shutting down and the reply was cut short; retry the request.",
        headers={"Retry-After": "1"},
    )
