"""The provider interface and the provider-neutral request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from providers.events import StreamEvent


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat request as a provider sees it.

    ``messages`` and ``params`` keep the OpenAI chat shape (the lingua franca every
    provider translates from). ``params`` holds the sampling and tool parameters the
    client sent (temperature, top_p, stop, seed, tools, tool_choice, response_format,
    user, ...) minus what the gateway handles itself; ``max_tokens`` is normalised from
    ``max_tokens`` / ``max_completion_tokens``. ``options`` are the per-request
    provider options (the fake provider's knobs), already merged over the model's
    configured ``options``.
    """

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    seed: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Provider(Protocol):
    """Anything that streams a reply for a :class:`ChatRequest`.

    ``stream`` returns an async iterator of events (normally an async generator).
    Raising before the first event means no reply was started; raising later means
    the reply was cut. The iterator must release its upstream (connection, request,
    task) when closed early: the gateway closes it when the client goes away.
    """

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Yield the reply's events; see :mod:`providers.events` for their order."""
        ...

    async def aclose(self) -> None:
        """Release long-lived resources (HTTP clients, pools)."""
        ...
