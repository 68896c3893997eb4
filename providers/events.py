"""Provider-neutral stream events: the only things that leave ``providers/``.

A provider's stream yields, in order:

* optionally one :class:`Accepted`, once the upstream accepted the request (a 2xx
  answer), before any content (the routing layer takes it: the gateway may open the
  client's stream then, so its first token goes out alone),
* any number of :class:`TextDelta` and :class:`ToolCallDelta`,
* exactly one :class:`Finish` (the generation ended normally),
* optionally one :class:`Usage` (after ``Finish``; counts as known to the provider),
  or, when the upstream reported none, one :class:`TokenCount` (the completion
  counted by the upstream's own tokenizer).

A stream that ends without a ``Finish`` was cut: the gateway reports that as an
error, never as a clean end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(frozen=True, slots=True)
class Accepted:
    """The upstream accepted the request and is generating: no content yet."""


#: The one :class:`Accepted` (it has no fields).
ACCEPTED = Accepted()


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of generated text: one token, or a few when a character spans tokens."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a tool call; fields other than ``index`` arrive once, at its start."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Finish:
    """The generation ended normally, for ``reason``."""

    reason: FinishReason
    #: Which of the request's stop sequences ended it, when the provider knows.
    stop_sequence: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as reported (or counted) by the provider."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class TokenCount:
    """The completion's tokens as the upstream's own tokenizer counts them: sent
    instead of :class:`Usage` by a provider asked to count (``usage_count: tokenize``)."""

    completion_tokens: int


StreamEvent = Accepted | TextDelta | ToolCallDelta | Finish | Usage | TokenCount
