"""One request's reply: what was asked, what came back, and how it ended.

Shared by the streaming relay (:mod:`gateway.relay`) and the non-streaming
collector (:mod:`gateway.collect`); it logs the request's single
``stream_finished`` event.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway.attempts import Opened, open_stream
from gateway.errors import ShuttingDown, UpstreamTimeout, from_provider_error
from gateway.registry import Route
from gateway.schema import ChatCompletionRequest
from providers.base import ChatRequest
from providers.errors import ProviderError
from providers.events import FinishReason, Usage
from providers.tokenizer import Tokenizer

log = structlog.get_logger("tokenpipe.relay")


@dataclass(slots=True)
class Reply:
    """What one request asked for and what it got; logged once at the end."""

    request: ChatCompletionRequest
    routes: list[Route]
    request_id: str
    tokenizer: Tokenizer
    started: float = field(default_factory=time.perf_counter)
    route: Route | None = None
    completion_tokens: int = 0
    first_token_at: float | None = None
    finish: FinishReason | None = None
    usage: Usage | None = None
    reason: str = "upstream_error"
    #: Set when the drain time ran out and this reply is being cut.
    shutting_down: bool = False
    texts: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)

    def build_request(self, route: Route) -> ChatRequest:
        """The provider-neutral request for one route."""
        req = self.request
        options = {**route.config.options, **(req.fake or {})}
        return ChatRequest(
            model=route.config.upstream_name,
            messages=[m.model_dump(exclude_none=True) for m in req.messages],
            max_tokens=req.token_limit,
            seed=req.seed,
            params=req.passthrough_params(),
            options=options,
        )

    async def open(self) -> Opened:
        """Start the upstream (retries, fallbacks) and bind the route to the logs.

        Raises :class:`GatewayError` when no route delivered a first event.
        """
        try:
            opened = await open_stream(self.routes, self.build_request)
        except ProviderError as exc:
            raise from_provider_error(exc) from None
        self.route = opened.route
        structlog.contextvars.bind_contextvars(
            route=opened.route.name, provider=opened.route.provider_kind
        )
        return opened

    def prompt_tokens(self) -> int:
        if self.usage is not None:
            return self.usage.prompt_tokens
        return self.tokenizer.count_messages(
            m.model_dump(exclude_none=True) for m in self.request.messages
        )

    def reported_completion_tokens(self) -> int:
        """The upstream's count, else tiktoken's over the text (an upstream chunk may
        carry several tokens, so counting events would undercount)."""
        if self.usage is not None:
            return self.usage.completion_tokens
        return self.tokenizer.count("".join(self.texts)) if self.texts else 0

    def log_finished(self, **extra: Any) -> None:
        now = time.perf_counter()
        ttft = self.first_token_at - self.started if self.first_token_at is not None else None
        log.info(
            "stream_finished",
            reason=self.reason,
            finish_reason=self.finish,
            route=self.route.name if self.route else None,
            provider=self.route.provider_kind if self.route else None,
            completion_tokens=self.completion_tokens,
            ttft_ms=round(ttft * 1000, 2) if ttft is not None else None,
            duration_ms=round((now - self.started) * 1000, 2),
            **extra,
        )


def end_reason(exc: BaseException) -> str:
    """The recorded end reason of a reply that failed with ``exc``."""
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, ShuttingDown):
        return "shutdown"
    return "upstream_error"


def shutdown_error() -> ShuttingDown:
    """The error of a reply cut because the drain time ran out."""
    return ShuttingDown(
        "The server is shutting down and the reply was cut short; retry the request.",
        headers={"Retry-After": "1"},
    )
