"""The contract every upstream provider keeps, written once, run against each.

A new provider gets these by adding a :class:`Kind` to :data:`KINDS`: it satisfies
the :class:`~providers.base.Provider` protocol, translates refused connections and
connect timeouts by type, closes its upstream request when its iterator is closed
or its consumer cancelled, treats a cut stream as unavailable, and never lets the
key it sent upstream reach an error message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import SecretStr

from config.models import UpstreamConfig
from providers.anthropic.provider import AnthropicProvider
from providers.base import ChatRequest, Provider
from providers.errors import ProviderError, ProviderTimeout, ProviderUnavailable
from providers.events import ACCEPTED, Accepted, TextDelta
from providers.openai.provider import OpenAIProvider
from tests.support import provider_streams as streams
from tests.support.fakes.anthropic_upstream import FakeAnthropicUpstream
from tests.support.fakes.openai_upstream import (
    Behaviour,
    FakeOpenAIUpstream,
    FakeUpstream,
    blackhole_port,
)
from tests.support.ports import free_port

KEY = "sk-contract-5eed1e55c0ffee"


@dataclass(frozen=True)
class Kind:
    """How to build one provider and the fake upstream speaking its wire format."""

    name: str
    provider: Callable[[UpstreamConfig], Provider]
    fake: Callable[[], FakeUpstream]
    #: The path a base URL ends in (the OpenAI SDK wants ``/v1``).
    base_path: str
    #: What the fake's 401 body says, as the provider reports it.
    auth_message: str


KINDS = [
    Kind("openai", OpenAIProvider, FakeOpenAIUpstream, "/v1", "Incorrect API key"),
    Kind("anthropic", AnthropicProvider, FakeAnthropicUpstream, "", "invalid x-api-key"),
]


@pytest.fixture(params=KINDS, ids=[k.name for k in KINDS])
def kind(request: pytest.FixtureRequest) -> Kind:
    found: Kind = request.param
    return found


@pytest.fixture
async def fake(kind: Kind) -> AsyncIterator[FakeUpstream]:
    async with kind.fake() as server:
        yield server


@pytest.fixture
async def provider(kind: Kind, fake: FakeUpstream) -> AsyncIterator[Provider]:
    upstream = UpstreamConfig(base_url=fake.base_url, api_key=SecretStr(KEY), connect_timeout=5)
    instance = kind.provider(upstream)
    yield instance
    await instance.aclose()


def request() -> ChatRequest:
    return ChatRequest(model="m", messages=[{"role": "user", "content": "Say hello"}])


async def failure(provider: Provider) -> ProviderError:
    """The error the stream ends with; no finish may come before it."""
    return await streams.failure(provider, request())


def test_satisfies_the_provider_protocol(kind: Kind) -> None:
    assert isinstance(kind.provider(UpstreamConfig(base_url="http://127.0.0.1:1/v1")), Provider)


async def test_connection_refused_is_unavailable(kind: Kind) -> None:
    base_url = f"http://127.0.0.1:{free_port()}{kind.base_path}"
    provider = kind.provider(UpstreamConfig(base_url=base_url, api_key=SecretStr(KEY)))
    try:
        error = await failure(provider)
        assert type(error) is ProviderUnavailable
        assert KEY not in str(error)
    finally:
        await provider.aclose()


async def test_connect_timeout_is_provider_timeout(kind: Kind) -> None:
    with blackhole_port() as port:
        base_url = f"http://127.0.0.1:{port}{kind.base_path}"
        provider = kind.provider(UpstreamConfig(base_url=base_url, connect_timeout=0.3))
        try:
            assert type(await failure(provider)) is ProviderTimeout
        finally:
            await provider.aclose()


async def test_cut_stream_is_unavailable(fake: FakeUpstream, provider: Provider) -> None:
    fake.script = [Behaviour(tokens=5, cut_after=2)]
    assert type(await failure(provider)) is ProviderUnavailable


async def test_api_key_never_in_error_messages(
    kind: Kind, fake: FakeUpstream, provider: Provider
) -> None:
    fake.script = [Behaviour(status=401)]  # the fake echoes the key it received
    error = await failure(provider)
    assert kind.auth_message in error.message
    assert KEY not in str(error)
    assert KEY not in repr(error)
    assert error.__cause__ is None or KEY not in str(error.__cause__)


async def test_a_2xx_answer_is_announced_once_before_any_content(
    fake: FakeUpstream, provider: Provider
) -> None:
    """The upstream's acceptance (its 2xx head) is the stream's first event, once:
    the gateway may open the client's stream on it, before the first token."""
    fake.script = [Behaviour(tokens=3)]
    events = [event async for event in provider.stream(request())]
    assert events[0] == ACCEPTED
    assert not any(type(e) is Accepted for e in events[1:])
    assert isinstance(events[1], TextDelta)


async def test_an_error_status_is_never_accepted(fake: FakeUpstream, provider: Provider) -> None:
    fake.script = [Behaviour(status=500)]
    events: list[object] = []
    with pytest.raises(ProviderError):
        async for event in provider.stream(request()):
            events.append(event)
    assert events == []


async def test_closing_the_generator_closes_the_upstream_request(
    fake: FakeUpstream, provider: Provider
) -> None:
    fake.script = [Behaviour(tokens=100, stall_after=1)]
    stream: Any = provider.stream(request())
    assert await anext(stream) == ACCEPTED
    assert isinstance(await anext(stream), TextDelta)
    closed_by_us = time.monotonic()
    await stream.aclose()
    closed_at = await fake.wait_closed(0, timeout=5)
    assert closed_at - closed_by_us < 2.0
    assert fake.requests[0].completed_at is None


async def test_cancelling_the_consumer_closes_the_upstream_request(
    fake: FakeUpstream, provider: Provider
) -> None:
    fake.script = [Behaviour(tokens=100, delay=0.05)]
    first = asyncio.Event()

    async def consume_all() -> None:
        async for _ in provider.stream(request()):
            first.set()

    task = asyncio.create_task(consume_all())
    await asyncio.wait_for(first.wait(), 5)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    closed_at = await fake.wait_closed(0, timeout=5)
    assert closed_at - cancelled_at < 2.0
