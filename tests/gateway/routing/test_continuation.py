"""Failover after the first token (``continue_on_fallback``): the next route continues
the partial answer and the client sees one seamless stream.

Upstreams are real servers (tests/support/fakes) cut mid-stream, or the fake provider
told to fail after some tokens; the continuing route is the fake provider, which goes
on from a prefix of its own reply (``providers/fake/reply.py``).
"""

from __future__ import annotations

from typing import Any

import orjson
from structlog.testing import capture_logs

from providers.base import ChatRequest
from providers.fake.provider import FakeProvider
from providers.support.tokenizer import Tokenizer
from tests.gateway.routing.test_routing import FAST, upstream_model
from tests.support.fakes.openai_upstream import Behaviour, FakeOpenAIUpstream, expected_text
from tests.support.sse_client import Captured, stream_request

MESSAGES = [{"role": "user", "content": "Tell me about lighthouses."}]


def body(model: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": MESSAGES,
        "stream": True,
        "seed": 7,
        "stream_options": {"include_usage": True},
        **extra,
    }


def fake_reply(messages: list[dict[str, Any]], reply_tokens: int | None = None) -> list[str]:
    """What the fake provider says, token by token, for ``messages`` and seed 7."""
    provider = FakeProvider(Tokenizer.load())
    request = ChatRequest(model="fake-fast", messages=messages, seed=7)
    return [event.text for event in provider.reply(request, reply_tokens)]


def assert_one_clean_stream(got: Captured) -> None:
    assert got.status == 200, got.raw[:300]
    assert got.data[-1] == "[DONE]"
    assert not any('"error"' in d for d in got.data)
    finishes = [c["choices"][0]["finish_reason"] for c in got.chunks if c["choices"]]
    assert [f for f in finishes if f is not None] == ["stop"]


def content_chunks(got: Captured) -> int:
    return sum(1 for c in got.chunks if c["choices"] and c["choices"][0]["delta"].get("content"))


async def test_cut_upstream_is_continued_by_the_fallback(make_gateway: Any) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=20, cut_after=6)) as fake:
        url = await make_gateway(
            models=[
                upstream_model(
                    "up", fake.base_url, fallbacks=["fake-fast"], continue_on_fallback=True
                )
            ]
        )
        with capture_logs() as logs:
            got = await stream_request(url, body("up"))
    assert_one_clean_stream(got)
    prefix = expected_text(6)
    # The fake's own reply does not start with the upstream's words: a new reply of
    # the conversation that ends with the partial answer, after it, nothing repeated.
    rest = fake_reply([*MESSAGES, {"role": "assistant", "content": prefix}])
    assert got.text == prefix + "".join(rest)
    usage = got.chunks[-1]["usage"]
    assert got.chunks[-1]["choices"] == []
    assert usage["completion_tokens"] == content_chunks(got) == 6 + len(rest)
    assert usage["prompt_tokens"] == Tokenizer.load().count_messages(MESSAGES)
    continued = [e for e in logs if e["event"] == "upstream_continued"]
    assert len(continued) == 1
    assert continued[0]["route"] == "up"
    assert continued[0]["continued_on"] == "fake-fast"
    assert continued[0]["tokens"] == 6
    finished = [e for e in logs if e["event"] == "stream_finished"]
    assert finished[0]["reason"] == "stop"
    assert finished[0]["completion_tokens"] == 6 + len(rest)


async def test_a_continued_fake_reads_as_the_whole_reply(make_gateway: Any) -> None:
    """The fake as both parts: the text is exactly what one route would have said."""
    url = await make_gateway(
        models=[
            {
                "name": "flaky",
                "provider": "fake",
                "options": {"fail_after": 10},
                "fallbacks": ["fake-fast"],
                "continue_on_fallback": True,
                "timeouts": FAST,
            }
        ]
    )
    got = await stream_request(url, body("flaky", fake={"reply_tokens": 40}))
    assert_one_clean_stream(got)
    whole = fake_reply(MESSAGES, reply_tokens=40)
    assert got.text == "".join(whole)
    assert content_chunks(got) == 40
    assert got.chunks[-1]["usage"]["completion_tokens"] == 40
    # Without the failure, the same request says the same.
    plain = await stream_request(url, body("fake-fast", fake={"reply_tokens": 40}))
    assert plain.text == got.text


async def test_non_streaming_reply_is_continued_too(make_gateway: Any) -> None:
    url = await make_gateway(
        models=[
            {
                "name": "flaky",
                "provider": "fake",
                "options": {"fail_after": 3},
                "fallbacks": ["fake-fast"],
                "continue_on_fallback": True,
            }
        ]
    )
    got = await stream_request(url, body("flaky", stream=False, fake={"reply_tokens": 12}))
    answer = orjson.loads(got.raw)
    assert answer["choices"][0]["message"]["content"] == "".join(fake_reply(MESSAGES, 12))
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] == 12


async def test_the_continuation_keeps_to_max_tokens(make_gateway: Any) -> None:
    url = await make_gateway(
        models=[
            {
                "name": "flaky",
                "provider": "fake",
                "options": {"fail_after": 4},
                "fallbacks": ["fake-fast"],
                "continue_on_fallback": True,
            }
        ]
    )
    got = await stream_request(url, body("flaky", max_tokens=9, fake={"reply_tokens": 30}))
    assert got.data[-1] == "[DONE]"
    assert got.text == "".join(fake_reply(MESSAGES, 30)[:9])
    finishes = [c["choices"][0]["finish_reason"] for c in got.chunks if c["choices"]]
    assert [f for f in finishes if f is not None] == ["length"]
    assert got.chunks[-1]["usage"]["completion_tokens"] == 9


async def test_without_the_opt_in_a_cut_is_still_an_in_band_error(make_gateway: Any) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=20, cut_after=6)) as fake:
        url = await make_gateway(models=[upstream_model("up", fake.base_url, fallbacks=["fake"])])
        with capture_logs() as logs:
            got = await stream_request(url, body("up"))
    assert got.status == 200
    assert "[DONE]" not in got.data
    assert orjson.loads(got.data[-1])["error"]["code"] == "upstream_error"
    assert got.text == expected_text(6)
    assert not [e for e in logs if e["event"] == "upstream_continued"]


async def test_no_fallback_able_to_continue_ends_with_the_first_error(make_gateway: Any) -> None:
    async with (
        FakeOpenAIUpstream(Behaviour(tokens=20, cut_after=6)) as first,
        FakeOpenAIUpstream(Behaviour(status=503)) as second,
    ):
        url = await make_gateway(
            models=[
                upstream_model("up", first.base_url, fallbacks=["down"], continue_on_fallback=True),
                upstream_model("down", second.base_url, retries=0),
            ]
        )
        got = await stream_request(url, body("up"))
    assert "[DONE]" not in got.data
    assert orjson.loads(got.data[-1])["error"]["code"] == "upstream_error"
    assert got.text == expected_text(6)
    # The fallback was asked to continue: the partial answer as the last message.
    assert second.requests[0].json["messages"][-1] == {
        "role": "assistant",
        "content": expected_text(6),
    }
