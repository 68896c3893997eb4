"""The dialect seam: what every inbound wire format provides to the streaming core.

A dialect parses its request body into a :class:`DialectRequest`, whose
:class:`InboundRequest` is all the gateway needs to route and produce the reply,
and whose :class:`Encoder` turns provider-neutral events into framed bytes. The
relay and the collector use these without knowing which dialect they serve; no
dialect's names appear outside this package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.errors import GatewayError
    from providers.events import FinishReason, ToolCallDelta

#: Prompt and completion tokens, computed only when an encoder needs them.
UsageCounts = Callable[[], tuple[int, int]]


@dataclass(frozen=True, slots=True)
class InboundRequest:
    """A client's request as the gateway handles it, whatever the dialect.

    ``messages`` and ``params`` keep the OpenAI chat shape, the lingua franca every
    provider translates from.
    """

    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    max_tokens: int | None = None
    seed: int | None = None
    #: Sampling, tool and unknown parameters passed on to the provider.
    params: dict[str, Any] = field(default_factory=dict)
    #: tokenpipe's extension: the fake provider's per-request knobs.
    fake: dict[str, Any] | None = None
    #: Run the reply to its end whether or not a client stays connected.
    background: bool = False


@dataclass(frozen=True, slots=True)
class Completed:
    """A whole reply, for a non-streaming answer."""

    id: str
    created: int
    model: str
    text: str
    tool_calls: list[dict[str, Any]]
    finish: FinishReason
    prompt_tokens: int
    completion_tokens: int
    #: The stop sequence that ended the reply, when one did (and the provider said so).
    stop_sequence: str | None = None


class Encoder(Protocol):
    """Provider events of one streamed reply -> framed SSE bytes, in one dialect.

    Called in the order of :mod:`providers.events`: :meth:`start` once, then
    :meth:`text` / :meth:`tool_call` per event, :meth:`finish`, and :meth:`end`
    with the usage; or :meth:`error` once, which ends a cut stream.
    """

    @property
    def first_id(self) -> int:
        """The SSE ``id`` of the stream's first event, then counted up by one per event.

        1, except where the dialect numbers its events in the payload too: then the
        same number, so that the ``id`` and the payload's number coincide (the
        Responses API's ``sequence_number``, from 0).
        """
        ...

    def start(self) -> bytes:
        """The opening frames."""
        ...

    def text(self, text: str) -> bytes:
        """One token of text: the per-token hot path."""
        ...

    def tool_call(self, delta: ToolCallDelta) -> bytes:
        """One tool-call fragment."""
        ...

    def finish(self, reason: FinishReason, stop_sequence: str | None = None) -> bytes:
        """The frames of the finish reason (and the stop sequence that caused it)."""
        ...

    def end(self, usage: UsageCounts) -> bytes:
        """Usage (when the dialect sends it) and the terminal frame."""
        ...

    def error(self, exc: GatewayError) -> bytes:
        """The one in-band error that ends a stream cut after it started."""
        ...


class DialectRequest(Protocol):
    """A parsed request of one dialect."""

    @property
    def inbound(self) -> InboundRequest:
        """What the gateway routes and produces."""
        ...

    def encoder(self, reply_id: str, created: int) -> Encoder:
        """The encoder of this request's streamed reply."""
        ...

    def completion(self, reply: Completed) -> dict[str, Any]:
        """The non-streaming answer's body."""
        ...

    def pending(self, reply_id: str, created: int) -> dict[str, Any]:
        """The answer to a background reply still running (``status: in_progress``)."""
        ...


class Dialect(Protocol):
    """One inbound wire format."""

    #: e.g. ``chat_completions``; also the metrics' and logs' name for it.
    name: str
    #: The OpenTelemetry GenAI operation name (``chat``).
    operation: str
    #: Prefix of the reply's public id (``chatcmpl-``, ``resp_``, ``msg_``).
    id_prefix: str

    def parse(self, body: bytes) -> DialectRequest:
        """Validate a request body; raises :class:`gateway.errors.BadRequest`."""
        ...

    def error_body(self, exc: GatewayError) -> dict[str, Any]:
        """An error before the stream started, as this dialect's JSON body."""
        ...
