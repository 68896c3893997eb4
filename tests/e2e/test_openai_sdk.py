"""The official openai SDK, sync and async, streaming and not, against a live gateway."""

from __future__ import annotations

import asyncio

import openai
import pytest
from openai import AsyncOpenAI, OpenAI


def sdk_client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


async def test_async_streaming(gateway_url: str) -> None:
    client = AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0)
    async with client:
        stream = await client.chat.completions.create(
            model="fake-fast",
            messages=[{"role": "user", "content": "Hello SDK"}],
            stream=True,
            stream_options={"include_usage": True},
            seed=5,
        )
        pieces: list[str] = []
        finishes: list[str] = []
        usage = None
        async for chunk in stream:
            assert chunk.model == "fake-fast"
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                if chunk.choices[0].finish_reason:
                    finishes.append(chunk.choices[0].finish_reason)
            if chunk.usage:
                usage = chunk.usage
    assert finishes == ["stop"]
    assert usage is not None
    assert usage.completion_tokens == sum(1 for p in pieces if p)
    assert "Hello SDK" in "".join(pieces)


async def test_async_non_streaming_matches_streaming_text(gateway_url: str) -> None:
    client = AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0)
    async with client:
        messages = [{"role": "user", "content": "Same text either way?"}]
        completion = await client.chat.completions.create(
            model="fake-fast",
            messages=messages,
            seed=9,  # type: ignore[arg-type]
        )
        stream = await client.chat.completions.create(
            model="fake-fast",
            messages=messages,  # type: ignore[arg-type]
            seed=9,
            stream=True,
        )
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert completion.object == "chat.completion"
    assert completion.model == "fake-fast"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == streamed
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 100


async def test_sync_client_streaming_and_not(gateway_url: str) -> None:
    def run() -> tuple[str, str, int]:
        client = sdk_client(gateway_url)
        with client:
            stream = client.chat.completions.create(
                model="fake-fast",
                messages=[{"role": "user", "content": "sync 😀"}],
                stream=True,
                max_tokens=30,
            )
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            done = client.chat.completions.create(
                model="fake-fast",
                messages=[{"role": "user", "content": "sync 😀"}],
                max_tokens=30,
            )
            assert done.usage is not None
            return text, done.choices[0].message.content or "", done.usage.completion_tokens

    streamed, whole, tokens = await asyncio.to_thread(run)
    assert streamed == whole
    assert tokens == 30


async def test_models_list_and_retrieve(gateway_url: str) -> None:
    client = AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0)
    async with client:
        ids = [m.id async for m in client.models.list()]
        model = await client.models.retrieve("fake")
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("nope")
    assert ids == ["fake", "fake-fast"]
    assert model.id == "fake"


async def test_sdk_raises_on_in_band_error(gateway_url: str) -> None:
    client = AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0)
    async with client:
        stream = await client.chat.completions.create(
            model="fake-fast",
            messages=[{"role": "user", "content": "fail please"}],
            stream=True,
            extra_body={"fake": {"fail_after": 3}},
        )
        received: list[str] = []
        with pytest.raises(openai.APIError, match="injected"):
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
    assert len(received) == 3


async def test_sdk_sees_status_errors(gateway_url: str) -> None:
    client = AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0)
    async with client:
        with pytest.raises(openai.NotFoundError) as not_found:
            await client.chat.completions.create(
                model="gpt-unknown", messages=[{"role": "user", "content": "x"}]
            )
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(
                model="fake",
                messages=[{"role": "wizard", "content": "x"}],  # type: ignore[list-item]
            )
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(
                model="fake-fast",
                messages=[{"role": "user", "content": "x"}],
                stream=True,
                extra_body={"fake": {"fail_after": 0, "error": "rate_limited"}},
            )
    assert not_found.value.code == "model_not_found"
    assert bad.value.param == "messages[0].role"
