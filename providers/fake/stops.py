"""Stop sequences for the fake provider: cut the reply at the first match.

The reply ends just before the earliest occurrence of any stop sequence (the stop
text itself is never sent), as OpenAI and Anthropic do; the token the match starts
in is shortened to the part before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from providers.events import TextDelta


def stop_list(stop: Any) -> list[str]:
    """The ``stop`` parameter (a string or a list of strings) as a list."""
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list):
        return [s for s in stop if isinstance(s, str) and s]
    return []


def apply_stops(tokens: Sequence[TextDelta], stop: Any) -> tuple[Sequence[TextDelta], str | None]:
    """``tokens`` cut before the first stop sequence, and the sequence (None: no match)."""
    stops = stop_list(stop)
    if not stops:
        return tokens, None
    text = "".join(t.text for t in tokens)
    found = [(i, s) for s in stops if (i := text.find(s)) >= 0]
    if not found:
        return tokens, None
    at, matched = min(found)
    kept: list[TextDelta] = []
    offset = 0
    for token in tokens:
        end = offset + len(token.text)
        if end <= at:
            kept.append(token)
        else:
            if at > offset:
                kept.append(TextDelta(token.text[: at - offset]))
            break
        offset = end
    return tuple(kept), matched
