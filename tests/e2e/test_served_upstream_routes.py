"""The served gateway (``python -m gateway``, on uvloop) relaying OpenAI-compatible and
Anthropic upstreams through the providers' own HTTP/1.1 client.

Regression: the in-process tests run on asyncio's loop; on uvloop, the client's first
version failed every stream (uvloop's transports are not ``asyncio.Transport``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from openai import AsyncOpenAI

from tests.support.fakes.anthropic_upstream import FakeAnthropicUpstream
from tests.support.fakes.openai_upstream import Behaviour, FakeOpenAIUpstream, expected_text
from tests.support.gateway import GatewayProcess
from tests.support.sdk_streams import assert_complete


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIUpstream]:
    async with FakeOpenAIUpstream() as server:
        yield server


@pytest.fixture
def served(
    fake: FakeOpenAIUpstream,
    gateway_process: Callable[..., GatewayProcess],
    tmp_path: Path,
) -> GatewayProcess:
    config = tmp_path / "tokenpipe.yaml"
    config.write_text(
        "models:\n  - name: relay\n    provider: openai\n"
        f"    base_url: {fake.base_url}\n    api_key: sk-upstream-7e1d\n"
    )
    return gateway_process("--config", str(config))


async def test_streams_through_the_served_gateway_on_one_upstream_connection(
    fake: FakeOpenAIUpstream, served: GatewayProcess
) -> None:
    fake.script = [Behaviour(tokens=7)]
    client = AsyncOpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    async with client:
        for _ in range(3):
            stream = await client.chat.completions.create(
                model="relay",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
            assert_complete(chunks, expected_text(7), 7)
    assert [r.headers["Authorization"] for r in fake.requests] == ["Bearer sk-upstream-7e1d"] * 3
    # Kept alive between replies (the drain after [DONE] is brief: allow one miss).
    assert len({r.peer for r in fake.requests}) < 3


async def test_a_client_leaving_closes_the_upstream_stream_at_once(
    fake: FakeOpenAIUpstream, served: GatewayProcess
) -> None:
    fake.script = [Behaviour(tokens=10_000, delay=0.02)]
    body = {"model": "relay", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"{served.url}/v1/chat/completions", json=body)
        assert response.status == 200
        tokens = 0
        while tokens < 3:
            line = await response.content.readline()
            assert line, "the stream ended early"
            tokens += line.startswith(b"data: ")
        left = asyncio.get_running_loop().time()
        response.close()
    closed_at = await fake.wait_closed(timeout=5)
    assert closed_at - left < 1.0


async def test_an_anthropic_route_streams_through_the_served_gateway(
    gateway_process: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """The Anthropic provider sends on the same HTTP/1.1 client (served, on uvloop)."""
    async with FakeAnthropicUpstream([Behaviour(tokens=6)]) as upstream:
        config = tmp_path / "tokenpipe.yaml"
        config.write_text(
            "models:\n  - name: claude\n    provider: anthropic\n"
            f"    base_url: {upstream.base_url}\n    api_key: sk-ant-5c2e\n"
        )
        served = gateway_process("--config", str(config))
        client = AsyncOpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
        async with client:
            for _ in range(2):
                stream = await client.chat.completions.create(
                    model="claude", messages=[{"role": "user", "content": "hi"}], stream=True
                )
                chunks = [chunk async for chunk in stream]
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                assert text == expected_text(6)
        assert [r.headers["x-api-key"] for r in upstream.requests] == ["sk-ant-5c2e"] * 2
