"""What one caller sends cannot crash or misuse the gateway: knobs, upstream data, headers.

Each test is named after the finding it reproduces (issue: "Nothing one caller sends
can stall, crash or misuse the gateway for everyone else").
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import orjson
import pytest

from providers.fake.reply import MAX_REPLY_TOKENS
from tests.conftest import MakeGateway
from tests.gateway.routing.test_routing import upstream_model
from tests.support.fakes.openai_upstream import Behaviour, FakeOpenAIUpstream
from tests.support.sse_client import chat, stream_request


async def post(url: str, body: bytes | dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/v1/chat/completions",
            data=data,
            headers={"Content-Type": "application/json"},
        ) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


async def test_tiny_request_for_a_million_fake_tokens_is_refused(gateway_url: str) -> None:
    body = {
        "model": "fake-fast",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 1,
        "seed": 3,
        "fake": {"reply_tokens": 1_000_000},
    }
    status, _, raw = await post(gateway_url, body)
    assert status == 400
    error = orjson.loads(raw)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "fake.reply_tokens"
    assert str(MAX_REPLY_TOKENS) in error["message"].replace(",", "").replace("_", "")


async def test_max_tokens_cuts_a_long_fake_reply_before_the_work(gateway_url: str) -> None:
    body = chat(stream=False, max_tokens=1, fake={"reply_tokens": MAX_REPLY_TOKENS})
    for seed in range(5):
        start = time.perf_counter()
        status, _, raw = await post(gateway_url, {**body, "seed": seed})
        elapsed = time.perf_counter() - start
        assert status == 200
        reply = orjson.loads(raw)
        assert reply["usage"]["completion_tokens"] == 1
        assert reply["choices"][0]["finish_reason"] == "length"
        assert elapsed < 0.25, elapsed


async def test_retry_after_infinity_is_a_400_not_a_500(gateway_url: str) -> None:
    raw_body = (
        b'{"model": "fake-fast", "messages": [{"role": "user", "content": "x"}],'
        b' "fake": {"fail_after": 0, "error": "rate_limited", "retry_after": Infinity}}'
    )
    status, _, raw = await post(gateway_url, raw_body)
    assert status == 400
    error = orjson.loads(raw)["error"]
    assert error["param"] == "fake.retry_after"
    assert error["type"] == "invalid_request_error"


async def test_retry_after_1e300_gives_a_small_integer_header(gateway_url: str) -> None:
    body = chat(stream=False, fake={"fail_after": 0, "error": "rate_limited", "retry_after": 1e300})
    status, headers, _ = await post(gateway_url, body)
    assert status == 429
    assert headers["Retry-After"] == "3600"


@pytest.mark.parametrize(
    ("knob", "value"),
    [("reply_tokens", -1), ("tokens_per_second", "fast"), ("jitter", 2), ("nope", 1)],
)
async def test_fake_knob_errors_are_the_clients_not_upstream_rejected(
    gateway_url: str, knob: str, value: object
) -> None:
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        status, _, raw = await post(gateway_url, chat(stream=False, fake={knob: value}))
    assert status == 400
    error = orjson.loads(raw)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_value"
    assert error["param"] == f"fake.{knob}"
    assert not [e for e in logs if e["event"] == "upstream_attempt_failed"]
    finished = [e for e in logs if e["event"] == "stream_finished"]
    assert finished
    assert finished[-1]["reason"] == "rejected"


HOSTILE_CHUNKS: list[Any] = [
    {"choices": [{"delta": {"tool_calls": [{"index": "x", "function": {"name": "f"}}]}}]},
    {"choices": [{"delta": {"tool_calls": [{"index": 10**30, "function": {}}]}}]},
    {"choices": [{"delta": {"tool_calls": "nope"}}]},
    {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": 5}}]}}]},
    {"choices": [{"delta": {"content": {"a": 1}}}]},
    {"choices": [{"delta": "x"}]},
    {"choices": "abc"},
    {"choices": [{"delta": {}, "finish_reason": ["stop"]}]},
    {"choices": {"0": 1}},
]


@pytest.mark.parametrize("chunk", HOSTILE_CHUNKS, ids=range(len(HOSTILE_CHUNKS)))
@pytest.mark.parametrize("stream", [True, False])
async def test_hostile_upstream_tool_call_index_is_a_502_not_a_500(
    make_gateway: MakeGateway, chunk: Any, stream: bool
) -> None:
    async with FakeOpenAIUpstream([Behaviour(raw=(chunk,))]) as fake:
        url = await make_gateway(models=[upstream_model("up", fake.base_url, retries=0)])
        body = {"model": "up", "messages": [{"role": "user", "content": "x"}], "stream": stream}
        got = await stream_request(url, body)
    # Before the first event: a 502; after it (in-band): one error event.
    if got.status == 200:
        assert stream
        assert orjson.loads(got.data[-1])["error"]["type"] == "upstream_error"
    else:
        assert got.status == 502
        assert orjson.loads(got.raw)["error"]["type"] == "upstream_error"


async def test_hostile_upstream_usage_counts_are_ignored(make_gateway: MakeGateway) -> None:
    chunks = (
        {"choices": [{"delta": {"content": "hi"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": "x", "completion_tokens": 1e308}},
        b"[DONE]",
    )
    async with FakeOpenAIUpstream([Behaviour(raw=chunks)]) as fake:
        url = await make_gateway(models=[upstream_model("up", fake.base_url, retries=0)])
        body = {"model": "up", "messages": [{"role": "user", "content": "x"}]}
        status, _, raw = await post(url, body)
    assert status == 200
    assert orjson.loads(raw)["choices"][0]["message"]["content"] == "hi"


async def test_request_id_with_trailing_newline_is_replaced(gateway_url: str) -> None:
    # aiohttp refuses a raw LF in a header value, so the pattern is checked directly too.
    from types import SimpleNamespace

    from gateway.http.middleware import request_id_of

    assert request_id_of(SimpleNamespace(headers={"X-Request-ID": "abc\n"})) != "abc\n"  # type: ignore[arg-type]
    got = await stream_request(gateway_url, chat(max_tokens=1), headers={"X-Request-ID": "ok-1"})
    assert got.headers["X-Request-ID"] == "ok-1"


async def test_fake_models_off_removes_the_builtins(make_gateway: MakeGateway) -> None:
    url = await make_gateway(fake_models=False)
    status, _, _raw = await post(url, chat(stream=False))
    assert status == 404
    async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/models") as resp:
        assert (await resp.json())["data"] == []


def _anthropic_frame(event: dict[str, Any]) -> bytes:
    # The stdlib encoder: big integers go out as written.
    data = json.dumps(event).encode()
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + data + b"\n\n"


def _anthropic_model(base_url: str) -> dict[str, Any]:
    return {
        "name": "up",
        "provider": "anthropic",
        "base_url": base_url,
        "api_key": "k",
        "retries": 0,
    }


#: Messages API events that raised AttributeError, TypeError, ValueError or
#: OverflowError in the Anthropic provider (found by test_fuzz's hostile streams): 500s.
HOSTILE_ANTHROPIC_EVENTS = [
    {"type": "message_start", "message": 1.0},
    {"type": "message_start", "message": {"usage": "x"}},
    {"type": "content_block_delta", "index": 0, "delta": "x"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": 5}},
    {"type": "content_block_start", "index": [0], "content_block": {"type": "tool_use"}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": 7}},
    {"type": "message_delta", "delta": {"stop_reason": ["end_turn"]}},
    {"type": "message_delta", "delta": [], "usage": {}},
]


@pytest.mark.parametrize(
    "event", HOSTILE_ANTHROPIC_EVENTS, ids=range(len(HOSTILE_ANTHROPIC_EVENTS))
)
@pytest.mark.parametrize("stream", [True, False])
async def test_hostile_anthropic_event_is_a_502_not_a_500(
    make_gateway: MakeGateway, event: dict[str, Any], stream: bool
) -> None:
    from tests.support.fakes.anthropic_upstream import FakeAnthropicUpstream

    frames = (_anthropic_frame(event), _anthropic_frame({"type": "message_stop"}))
    async with FakeAnthropicUpstream([Behaviour(raw=frames)]) as fake:
        url = await make_gateway(models=[_anthropic_model(fake.base_url)])
        body = {"model": "up", "messages": [{"role": "user", "content": "x"}], "stream": stream}
        got = await stream_request(url, body)
    if got.status == 200:
        assert stream
        assert orjson.loads(got.data[-1])["error"]["type"] == "upstream_error"
    else:
        assert got.status == 502
        assert orjson.loads(got.raw)["error"]["type"] == "upstream_error"


async def test_hostile_anthropic_usage_counts_are_ignored(make_gateway: MakeGateway) -> None:
    from tests.support.fakes.anthropic_upstream import FakeAnthropicUpstream

    frames = tuple(
        _anthropic_frame(e)
        for e in (
            {"type": "message_start", "message": {"usage": {"input_tokens": "x"}}},
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "hi"},
            },
            {"type": "message_delta", "usage": {"input_tokens": 1e308, "output_tokens": 2**80}},
            {"type": "message_stop"},
        )
    )
    async with FakeAnthropicUpstream([Behaviour(raw=frames)]) as fake:
        url = await make_gateway(models=[_anthropic_model(fake.base_url)])
        body = {"model": "up", "messages": [{"role": "user", "content": "x"}]}
        status, _, raw = await post(url, body)
    assert status == 200
    assert orjson.loads(raw)["choices"][0]["message"]["content"] == "hi"
