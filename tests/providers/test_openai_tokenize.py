"""``usage_count: tokenize``: OpenAIProvider asks the upstream's own tokenizer.

The fake upstream serves llama-cpp-python's ``/extras/tokenize/count``, llama.cpp's
and vLLM's ``/tokenize`` with a toy tokenizer (one token per character), so every
count here differs from the chunk count.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from config.models import ModelConfig, TokenizeApi, UpstreamConfig
from providers.base import ChatRequest
from providers.events import Finish, StreamEvent, TokenCount, Usage
from providers.openai.provider import OpenAIProvider
from tests.support import provider_streams as streams
from tests.support.fakes.openai_upstream import (
    Behaviour,
    FakeOpenAIUpstream,
    TokenizeBehaviour,
    ToolCallSpec,
    expected_text,
    fake_token_count,
)

KEY = "sk-test-4f1c0ffee0ddba11"
REQUEST = ChatRequest(model="local", messages=[{"role": "user", "content": "hi"}])


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIUpstream]:
    async with FakeOpenAIUpstream(Behaviour(tokens=9, usage=False)) as server:
        yield server


def upstream_of(fake: FakeOpenAIUpstream, **tokenize: Any) -> UpstreamConfig:
    """The provider's section, as ModelConfig.upstream() builds it for a tokenize route."""
    model = ModelConfig(
        name="local",
        provider="openai",
        base_url=fake.base_url,
        api_key=SecretStr(KEY),
        usage_count="tokenize",
        tokenize=tokenize,
    )
    return model.upstream()


async def events_of(fake: FakeOpenAIUpstream, **tokenize: Any) -> list[StreamEvent]:
    provider = OpenAIProvider(upstream_of(fake, **tokenize))
    try:
        return await streams.collect(provider, REQUEST)
    finally:
        await provider.aclose()


async def test_counts_the_completion_with_llama_cpp_pythons_endpoint(
    fake: FakeOpenAIUpstream,
) -> None:
    events = await events_of(fake)
    expected = fake_token_count(expected_text(9))
    assert expected != 9
    assert events[-2:] == [Finish("stop"), TokenCount(expected)]
    # The text, and once per model the empty text (the tokens any text gets: a BOS).
    baseline, asked = sorted(fake.tokenize_requests, key=lambda r: r.json["input"])
    assert baseline.json == {"model": "local", "input": ""}
    assert asked.path == "/extras/tokenize/count"
    assert asked.json == {"model": "local", "input": expected_text(9)}
    # The upstream's auth goes along: llama-cpp-python's --api_key guards every route.
    assert asked.headers["Authorization"] == f"Bearer {KEY}"


async def test_the_bos_llama_cpp_python_adds_is_measured_once_and_subtracted(
    fake: FakeOpenAIUpstream,
) -> None:
    fake.tokenize = TokenizeBehaviour(bos=True)
    provider = OpenAIProvider(upstream_of(fake))
    try:
        first = await streams.collect(provider, REQUEST)
        second = await streams.collect(provider, REQUEST)
    finally:
        await provider.aclose()
    expected = TokenCount(fake_token_count(expected_text(9)))
    assert first[-1] == second[-1] == expected
    asked = [r.json["input"] for r in fake.tokenize_requests]
    assert sorted(asked) == ["", expected_text(9), expected_text(9)]


@pytest.mark.parametrize(
    ("api", "path", "body"),
    [
        ("llama.cpp", "/tokenize", {"content": expected_text(9)}),
        (
            "vllm",
            "/tokenize",
            {"model": "local", "prompt": expected_text(9), "add_special_tokens": False},
        ),
    ],
)
async def test_llama_server_and_vllm_flavours(
    fake: FakeOpenAIUpstream, api: TokenizeApi, path: str, body: dict[str, Any]
) -> None:
    fake.tokenize = TokenizeBehaviour(bos=True)  # neither asks for special tokens
    events = await events_of(fake, api=api)
    assert events[-1] == TokenCount(fake_token_count(expected_text(9)))
    [asked] = fake.tokenize_requests
    assert (asked.path, asked.json) == (path, body)


async def test_an_explicit_url(fake: FakeOpenAIUpstream) -> None:
    root = fake.base_url.removesuffix("/v1")
    events = await events_of(fake, url=f"{root}/extras/tokenize/count")
    assert isinstance(events[-1], TokenCount)


async def test_tool_call_names_and_arguments_are_counted(fake: FakeOpenAIUpstream) -> None:
    call = ToolCallSpec(id="call_1", name="get_weather", arguments='{"city": "東京"}')
    fake.script = [Behaviour(tokens=2, usage=False, tool_calls=(call,))]
    events = await events_of(fake)
    text = fake_token_count(expected_text(2))
    assert events[-1] == TokenCount(text + fake_token_count(call.name + call.arguments))
    assert sorted(r.json["input"] for r in fake.tokenize_requests) == sorted(
        ["", expected_text(2), call.name + call.arguments]
    )


async def test_the_upstreams_usage_wins(fake: FakeOpenAIUpstream) -> None:
    fake.script = [Behaviour(tokens=9, usage=True)]
    events = await events_of(fake)
    assert isinstance(events[-1], Usage)
    assert not fake.tokenize_requests


async def test_an_empty_reply_counts_zero_without_asking(fake: FakeOpenAIUpstream) -> None:
    fake.script = [Behaviour(tokens=0, usage=False)]
    events = await events_of(fake)
    assert events[-1] == TokenCount(0)
    assert not fake.tokenize_requests


@pytest.mark.parametrize(
    ("behaviour", "error"),
    [
        (TokenizeBehaviour(status=500), "upstream returned 500"),
        (TokenizeBehaviour(status=404), "upstream returned 404"),
        (TokenizeBehaviour(body={"tokens": "many"}), "the answer holds no token count"),
        (TokenizeBehaviour(body={"count": -3}), "the answer holds no token count"),
    ],
    ids=["500", "404", "no-count", "negative"],
)
async def test_a_failed_count_falls_back_with_one_log_line(
    fake: FakeOpenAIUpstream, behaviour: TokenizeBehaviour, error: str
) -> None:
    fake.tokenize = behaviour
    with capture_logs() as logs:
        events = await events_of(fake)
    assert events[-1] == Finish("stop")  # no count: the gateway counts chunks
    [line] = [e for e in logs if e["event"] == "usage_tokenize_failed"]
    assert line["error"] == error
    assert line["counted_by"] == "chunks"
    assert line["log_level"] == "warning"


async def test_a_slow_tokenizer_is_given_up_on_within_the_timeout(
    fake: FakeOpenAIUpstream,
) -> None:
    fake.tokenize = TokenizeBehaviour(delay=5)
    started = time.monotonic()
    with capture_logs() as logs:
        events = await events_of(fake, timeout=0.2)
    assert time.monotonic() - started < 2
    assert events[-1] == Finish("stop")
    [line] = [e for e in logs if e["event"] == "usage_tokenize_failed"]
    assert line["error"] == "no answer in 0.2 s"


async def test_no_tokenize_endpoint_listening_falls_back(fake: FakeOpenAIUpstream) -> None:
    with capture_logs() as logs:
        events = await events_of(fake, url="http://127.0.0.1:9/tokenize")
    assert events[-1] == Finish("stop")
    assert [e["event"] for e in logs] == ["usage_tokenize_failed"]


async def test_a_cut_stream_is_not_counted(fake: FakeOpenAIUpstream) -> None:
    fake.script = [Behaviour(tokens=9, usage=False, cut_after=4)]
    provider = OpenAIProvider(upstream_of(fake))
    try:
        await streams.failure(provider, REQUEST)
    finally:
        await provider.aclose()
    assert not fake.tokenize_requests
