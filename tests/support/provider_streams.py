"""Reading a provider's stream in tests: all its events, or the error it ends with."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from providers.base import ChatRequest, Provider
from providers.errors import ProviderError
from providers.events import Accepted, Finish, StreamEvent, TextDelta


async def collect(provider: Provider, request: ChatRequest) -> list[StreamEvent]:
    """Every event of a stream that ends cleanly, after its :class:`Accepted` (see
    :func:`consume`)."""
    events: list[StreamEvent] = []
    await consume(provider.stream(request), events)
    return events


async def consume(stream: AsyncIterator[StreamEvent], into: list[StreamEvent]) -> None:
    """Append the stream's events to ``into`` until it ends (or raises), as the
    routing layer hands them on: an :class:`Accepted` may come first, once, and is
    not appended (``test_contract`` checks where providers send it)."""
    first = True
    async for event in stream:
        if type(event) is Accepted:
            assert first, "Accepted after the stream's first event"
        else:
            into.append(event)
        first = False


async def failure(provider: Provider, request: ChatRequest) -> ProviderError:
    """The error the stream ends with; no finish may come before it."""
    events: list[StreamEvent] = []
    with pytest.raises(ProviderError) as info:
        await consume(provider.stream(request), events)
    assert not any(isinstance(e, Finish) for e in events)
    return info.value


def text_of(events: list[StreamEvent]) -> str:
    """The text of the stream's text events."""
    return "".join(e.text for e in events if isinstance(e, TextDelta))
