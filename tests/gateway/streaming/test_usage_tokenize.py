"""``usage_count: tokenize`` through a live gateway: one count for every consumer.

The fake upstream streams without ``usage`` (as llama-cpp-python does) and counts
one token per character at its tokenize endpoint, so the chunk count (9) and the
tokenizer's count differ: the usage chunk, the non-streaming body, the
``stream_finished`` line, the key's settled usage and ``/metrics`` must all say the
tokenizer's, or all fall back to the chunks together.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from tests.support.fakes.openai_upstream import (
    Behaviour,
    FakeOpenAIUpstream,
    TokenizeBehaviour,
    expected_text,
    fake_token_count,
)
from tests.support.gateway import MakeGateway
from tests.support.sse_client import stream_request

KEY = "sk-team-a-7d1e0c2b9f"
ADMIN = "sk-admin-90c0ffee11"
AUTH = {"keys": [{"name": "team-a", "key": KEY, "budget_tokens": 100_000}], "admin_key": ADMIN}
HEADERS = {"Authorization": f"Bearer {KEY}"}
BODY = {
    "model": "local",
    "messages": [{"role": "user", "content": "x"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}
TOKENIZED = fake_token_count(expected_text(9))


def route(fake: FakeOpenAIUpstream, **extra: Any) -> dict[str, Any]:
    return {
        "name": "local",
        "provider": "openai",
        "base_url": fake.base_url,
        "retries": 0,
        "usage_count": "tokenize",
        **extra,
    }


async def admin_get(url: str, path: str) -> bytes:
    await asyncio.sleep(0.2)  # settles run in the background once each reply ends
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}{path}", headers={"Authorization": f"Bearer {ADMIN}"}) as r,
    ):
        assert r.status == 200
        return await r.read()


async def output_tokens(url: str) -> float:
    text = (await admin_get(url, "/metrics")).decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tokenpipe_tokens_total"
        and sample.labels.get("gen_ai_token_type") == "output"
    )


async def test_every_consumer_gets_the_upstream_tokenizers_count(
    make_gateway: MakeGateway,
) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=9, usage=False)) as fake:
        url = await make_gateway(models=[route(fake)], auth=AUTH)
        with capture_logs() as logs:
            got = await stream_request(url, BODY, headers=HEADERS)
            whole = await stream_request(url, {**BODY, "stream": False}, headers=HEADERS)
        usage = orjson.loads(await admin_get(url, "/v1/usage"))["keys"]["team-a"]
        metered = await output_tokens(url)
    assert TOKENIZED != 9
    assert got.text == expected_text(9)
    assert got.chunks[-1]["usage"]["completion_tokens"] == TOKENIZED
    assert orjson.loads(whole.raw)["usage"]["completion_tokens"] == TOKENIZED
    finished = [e for e in logs if e["event"] == "stream_finished"]
    assert [e["counted_by"] for e in finished] == ["tokenize", "tokenize"]
    assert usage["completion_tokens"] == 2 * TOKENIZED
    assert metered == 2 * TOKENIZED


async def test_a_failing_tokenizer_falls_back_to_chunks_everywhere(
    make_gateway: MakeGateway,
) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=9, usage=False)) as fake:
        fake.tokenize = TokenizeBehaviour(status=503)
        url = await make_gateway(models=[route(fake)], auth=AUTH)
        with capture_logs() as logs:
            got = await stream_request(url, BODY, headers=HEADERS)
        usage = orjson.loads(await admin_get(url, "/v1/usage"))["keys"]["team-a"]
        metered = await output_tokens(url)
    assert got.text == expected_text(9)
    assert got.data[-1] == "[DONE]"
    assert got.chunks[-1]["usage"]["completion_tokens"] == 9
    assert [e["event"] for e in logs].count("usage_tokenize_failed") == 1
    finished = next(e for e in logs if e["event"] == "stream_finished")
    assert finished["counted_by"] == "chunks"
    assert usage["completion_tokens"] == metered == 9


async def test_a_slow_tokenizer_delays_only_the_usage_chunk_within_its_bound(
    make_gateway: MakeGateway,
) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=9, usage=False)) as fake:
        fake.tokenize = TokenizeBehaviour(delay=10)
        url = await make_gateway(models=[route(fake, tokenize={"timeout": 0.3})])
        started = time.monotonic()
        with capture_logs() as logs:
            got = await stream_request(url, BODY)
        took = time.monotonic() - started
    assert 0.3 <= took < 2
    assert got.data[-1] == "[DONE]"
    assert got.chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert got.chunks[-1]["usage"]["completion_tokens"] == 9
    finished = next(e for e in logs if e["event"] == "stream_finished")
    assert finished["counted_by"] == "chunks"


async def test_the_upstreams_own_usage_wins(make_gateway: MakeGateway) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=9, usage=True)) as fake:
        url = await make_gateway(models=[route(fake)])
        with capture_logs() as logs:
            got = await stream_request(url, BODY)
    assert got.chunks[-1]["usage"]["completion_tokens"] == 9
    assert not fake.tokenize_requests
    finished = next(e for e in logs if e["event"] == "stream_finished")
    assert finished["counted_by"] == "upstream"


async def test_a_continued_reply_is_counted_by_chunks(make_gateway: MakeGateway) -> None:
    """The fallback's tokenizer would count only its part: its count is dropped."""
    async with (
        FakeOpenAIUpstream(Behaviour(tokens=9, usage=False, cut_after=4)) as cut,
        FakeOpenAIUpstream(Behaviour(tokens=5, usage=False)) as rest,
    ):
        models = [
            route(cut, fallbacks=["rest"], continue_on_fallback=True),
            {**route(rest), "name": "rest"},
        ]
        url = await make_gateway(models=models)
        with capture_logs() as logs:
            got = await stream_request(url, BODY)
    assert got.text == expected_text(4) + expected_text(5)
    assert rest.tokenize_requests  # asked, then dropped
    assert got.chunks[-1]["usage"]["completion_tokens"] == 9
    finished = next(e for e in logs if e["event"] == "stream_finished")
    assert finished["counted_by"] == "chunks"
