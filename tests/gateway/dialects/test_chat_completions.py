"""Outbound chunk bytes match the OpenAI schema (as the openai SDK types define it)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletionChunk

from gateway.dialects.chat_completions import _GATEWAY_FIELDS, ChunkEncoder, parse_request
from gateway.errors import UpstreamError
from gateway.streaming import framer
from providers.events import ToolCallDelta

_CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
TEXTS = ["hi", "", " multi\nline\r\n", 'quote " and \\ backslash', "😀 中文", "\u2028\u0000"]


def payload(frame: bytes) -> bytes:
    """The data of one single-line ``data:`` frame."""
    assert frame.startswith(b"data: ")
    assert frame.endswith(b"\n\n")
    assert frame.count(b"\n") == 2
    return frame[len(b"data: ") : -2]


@pytest.mark.parametrize("include_usage", [True, False])
def test_every_chunk_validates_against_the_sdk_types(include_usage: bool) -> None:
    encoder = ChunkEncoder(id="chatcmpl-x", created=5, model='m"odel', include_usage=include_usage)
    end = encoder.end(lambda: (10, 4))
    assert end.endswith(framer.DONE)
    frames = [
        encoder.start(),
        *(encoder.text(t) for t in TEXTS),
        encoder.tool_call(ToolCallDelta(index=0, id="c", name="f", arguments='{"a"')),
        encoder.tool_call(ToolCallDelta(index=0, arguments="}")),
        encoder.finish("length"),
    ]
    if include_usage:
        frames.append(end[: -len(framer.DONE)])
    else:
        assert end == framer.DONE
    chunks = [payload(f) for f in frames]
    for raw in chunks:
        parsed = ChatCompletionChunk.model_validate(orjson.loads(raw))
        assert parsed.id == "chatcmpl-x"
        assert parsed.model == 'm"odel'
        assert parsed.created == 5
        assert parsed.object == "chat.completion.chunk"
        assert ("usage" in orjson.loads(raw)) == include_usage
    texts = [
        ChatCompletionChunk.model_validate_json(c).choices[0].delta.content for c in chunks[1:7]
    ]
    assert texts == TEXTS
    if include_usage:
        assert ChatCompletionChunk.model_validate_json(chunks[-1]).usage.total_tokens == 14  # type: ignore[union-attr]


@pytest.mark.parametrize("text", TEXTS)
def test_text_frame_is_the_framed_content_chunk(text: str) -> None:
    """The hot path's pre-built template equals the framer applied to the chunk JSON."""
    encoder = ChunkEncoder(id="i", created=1, model="m", include_usage=False)
    frame = encoder.text(text)
    assert frame == framer.data_event(payload(frame))
    assert orjson.loads(payload(frame))["choices"][0]["delta"] == {"content": text}


def test_in_band_error_is_one_data_event_without_done() -> None:
    encoder = ChunkEncoder(id="i", created=1, model="m", include_usage=False)
    frame = encoder.error(UpstreamError("upstream went away"))
    assert orjson.loads(payload(frame)) == {
        "error": {
            "message": "upstream went away",
            "type": "upstream_error",
            "param": None,
            "code": "upstream_error",
        }
    }
    assert b"[DONE]" not in frame


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"temperature": 1, "top_p": 0.5},
        {"store": False, "service_tier": None, "user": "u-1"},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"stop": None, "seed": 3},
    ],
)
def test_passthrough_params_are_the_dump_of_what_was_sent(extra: dict[str, Any]) -> None:
    """The shortcut for a request that sends no parameter to pass on (nearly every
    benchmark's, and many clients') gives what the full dump gives."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    request = parse_request(orjson.dumps({**body, **extra}))
    dumped = request.model_dump(
        exclude=_GATEWAY_FIELDS, exclude_none=True, exclude_unset=True, by_alias=True
    )
    assert request.passthrough_params() == dumped
    assert request.inbound.params == dumped
    assert request.inbound.messages == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "x", "name": "a"}],
        [{"role": "user", "content": "hi", "name": None}],  # a null: dumped without it
        [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        [{"content": "k", "role": "user", "refusal": "r"}],  # key order and an extra
        [
            {"role": "assistant", "content": None, "tool_calls": [_CALL]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
        ],
    ],
)
def test_inbound_messages_are_the_validated_dump(messages: list[dict[str, Any]]) -> None:
    """Messages of strings only are taken as sent, the others are dumped: the
    provider gets the same dicts either way."""
    request = parse_request(orjson.dumps({"model": "m", "messages": messages}))
    expected = [m.model_dump(exclude_none=True) for m in request.messages]
    assert request.inbound.messages == expected


def test_messages_of_a_body_only_pydantic_reads_are_dumped_not_a_500() -> None:
    """Regression: pydantic reads ``Infinity`` and ``NaN``, orjson does not; taking
    the messages as sent raised from orjson (a 500 in tests/gateway/http's
    test_retry_after_infinity_is_a_400_not_a_500)."""
    body = b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "extra": Infinity}'
    request = parse_request(body)
    assert request.inbound.messages == [{"role": "user", "content": "x"}]
