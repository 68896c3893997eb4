"""Outbound chunk bytes match the OpenAI schema (as the openai SDK types define it)."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionChunk

from gateway.dialects.chat_completions import (
    _GATEWAY_FIELDS,
    CHAT_COMPLETIONS,
    ChatCompletionRequest,
    ChunkEncoder,
    PlainChatRequest,
    parse_request,
    plain_request,
)
from gateway.errors import BadRequest, UpstreamError
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


# --- the plain request: taken without the model, as the model would take it ---

_ANY = st.sampled_from([None, True, False, 0, 1, 2, -1, 1.5, 2.5, "", "x", [], {}, ["a"], [1]])
_VALID_MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "developer", "tool"]), "content": st.text()},
        optional={"name": st.just("a"), "tool_call_id": st.just("c1"), "refusal": st.just("r")},
    ),
    st.fixed_dictionaries(
        {"content": st.just("k"), "role": st.just("assistant")}
    ),  # key order as sent
)
_MESSAGE = st.one_of(
    _VALID_MESSAGE,
    _VALID_MESSAGE.flatmap(
        lambda m: st.sampled_from(sorted({*m, "content", "role", "tool_calls", "name"})).flatmap(
            lambda key: st.one_of(_ANY, st.just([_CALL]), st.just([{"type": "text"}])).map(
                lambda value: {**m, key: value}
            )
        )
    ),
    st.fixed_dictionaries({"role": st.just("assistant")}),
)
#: Each field's values: valid ones, and some the model refuses.
_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "stream": st.booleans(),
    "stream_options": st.sampled_from(
        [None, {}, {"include_usage": True}, {"include_usage": False}]
    ),
    "max_tokens": st.one_of(st.none(), st.integers(1, 10**6)),
    "max_completion_tokens": st.one_of(st.none(), st.integers(1, 10**6)),
    "seed": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    "n": st.sampled_from([None, 1]),
    "temperature": st.one_of(st.none(), st.floats(0, 2), st.integers(0, 2)),
    "top_p": st.one_of(st.none(), st.floats(0, 1), st.sampled_from([0, 1])),
    "presence_penalty": st.one_of(st.none(), st.floats(-2, 2)),
    "frequency_penalty": st.one_of(st.none(), st.integers(-2, 2)),
    "stop": st.one_of(st.none(), st.text(), st.lists(st.text(), max_size=3)),
    "fake": st.sampled_from([None, {"reply_tokens": 3}, {}]),
    "background": st.booleans(),
    "x_fake": st.sampled_from([{"tokens": 5, "delay": None}, None, [None, 1], 0]),
    "user": st.sampled_from(["u-1", None, 5]),
}
_WRONG: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["", 5, None]),
    "messages": st.sampled_from([[], "x", None, [1]]),
    "stream_options": st.sampled_from([{"include_usage": 1}, {"other": 1}, "s"]),
    "top_p": st.sampled_from([1.1, -0.1]),
    "temperature": st.sampled_from([2.5, -1e-9]),
    "presence_penalty": st.just(-2.5),
    "stop": st.sampled_from([[1], 5, ["a", None]]),
    "tools": st.sampled_from([[], [{"type": "function", "function": {"name": "f"}}]]),
    **{key: _ANY for key in ("stream", "max_tokens", "seed", "n", "fake", "background")},
}
_BODY = st.tuples(
    st.lists(_MESSAGE, min_size=1, max_size=3),
    st.fixed_dictionaries({}, optional=_FIELDS),
    st.one_of(
        st.none(),
        st.sampled_from(sorted(_WRONG)).flatmap(
            lambda key: _WRONG[key].map(lambda value: (key, value))
        ),
    ),
).map(
    lambda parts: {
        "model": "m",
        "messages": parts[0],
        **parts[1],
        **(dict([parts[2]]) if parts[2] is not None else {}),
    }
)


def _model_of(body: bytes) -> ChatCompletionRequest | None:
    try:
        return parse_request(body)
    except BadRequest:
        return None


def _agree(body: bytes) -> bool:
    """Whether :func:`plain_request` took ``body``, after checking that the model
    takes it too, and makes the same of it."""
    plain = plain_request(body)
    if plain is None:
        return False
    model = _model_of(body)
    assert model is not None, body
    assert plain.inbound == model.inbound
    assert plain.include_usage == model.include_usage
    for request in (plain, model):
        assert type(request.inbound.params) is dict
    ours, theirs = plain.encoder("chatcmpl-1", 7), model.encoder("chatcmpl-1", 7)
    assert (ours.start(), ours.text("hi"), ours.end(lambda: (1, 2))) == (
        theirs.start(),
        theirs.text("hi"),
        theirs.end(lambda: (1, 2)),
    )
    assert plain.pending("chatcmpl-1", 7) == model.pending("chatcmpl-1", 7)
    return True


@given(_BODY)
@settings(max_examples=600, deadline=None)
def test_a_plain_request_is_what_the_model_makes_of_it(body: dict[str, Any]) -> None:
    """The shortcut past pydantic takes only what the model accepts, and gives the
    same inbound request (messages, parameters and their order), encoder and answers."""
    _agree(orjson.dumps(body))


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        {  # as scripts/bench.py sends it
            "model": "relay",
            "messages": [{"role": "user", "content": "Benchmark the relay."}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "x_fake": {"tokens": 5, "delay": 0.0},
        },
        {
            "model": "m",
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
            "stream": True,
            "max_tokens": 64,
            "temperature": 0.7,
            "top_p": 1,
            "stop": ["\n\n"],
            "user": "u-1",
            "seed": 3,
        },
    ],
)
def test_the_common_request_takes_the_shortcut(body: dict[str, Any]) -> None:
    """What SDKs and benchmarks send is plain: a shortcut that never triggers would
    pass the agreement test above while saving nothing."""
    raw = orjson.dumps(body)
    assert _agree(raw)
    assert type(CHAT_COMPLETIONS.parse(raw)) is PlainChatRequest


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b"null",
        b"{",
        b'"x"',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "e": NaN}',
    ],
)
def test_what_is_not_plain_json_is_the_models_to_word(raw: bytes) -> None:
    assert plain_request(raw) is None
    with contextlib.suppress(BadRequest):
        CHAT_COMPLETIONS.parse(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"a","model":"b","messages":[{"role":"user","content":"x"}]}',
        b'{"model":"a","messages":[{"role":"user","content":"x","content":"y"}]}',
        b'{"model":"a","messages":[{"role":"user","content":"x"}],"stream":true,"stream":1}',
        b'\xef\xbb\xbf{"model":"a","messages":[{"role":"user","content":"x"}]}',
        b'{"model":"a","messages":[{"role":"user","content":"\\ud800"}]}',
        b'{"model":"a","messages":[{"role":"user","content":"x"}],"seed":18446744073709551615}',
        b'{"model":"a","messages":[{"role":"user","content":"x"}],"temperature":1e-400}',
        b'{"model":"a","messages":[{"role":"user","content":"x"}],"_dumped_messages":[1]}',
        b'{"model":"a","messages":[{"role":"user","content":"x"}],"model_config":1,"Model":2}',
    ],
)
def test_edge_bodies_are_taken_alike_or_left_to_the_model(raw: bytes) -> None:
    """Duplicate keys, a BOM, a lone surrogate, a 64-bit seed, an underflowing float,
    names pydantic uses itself: the shortcut agrees, or leaves the body to the model."""
    if _model_of(raw) is None:
        assert plain_request(raw) is None
    else:
        assert plain_request(raw) is None or _agree(raw)
