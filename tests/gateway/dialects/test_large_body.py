"""A large body validated in batches reads exactly as one validated whole."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dialects import large_body
from gateway.dialects.chat_completions import _MESSAGES, ChatCompletionRequest, parse_request
from gateway.dialects.validation import validate
from gateway.errors import BadRequest

text = st.text(st.characters(codec="utf-8"), max_size=20) | st.sampled_from(
    ['"', "\\", "}]{[", '\\"']
)
message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "user", "assistant"]),
        "content": text
        | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": text}), max_size=2),
    },
    optional={
        "name": text,
        "extra": st.integers() | st.lists(text, max_size=2),
    },
)
body = st.fixed_dictionaries(
    {"model": st.just("fake-fast"), "messages": st.lists(message, min_size=1, max_size=40)},
    optional={"stream": st.booleans(), "seed": st.integers(0, 9), "tools": st.just([]), "x": text},
)


def whole(raw: bytes) -> ChatCompletionRequest:
    return validate(ChatCompletionRequest, raw)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(doc=body, indent=st.sampled_from([None, 1]), batch=st.integers(1, 5))
def test_batched_validation_equals_whole(
    doc: dict[str, Any], indent: int | None, batch: int
) -> None:
    raw = json.dumps(doc, indent=indent).encode()
    large_body.BATCH_ITEMS, saved = batch, large_body.BATCH_ITEMS
    try:
        found = large_body.validate_large(ChatCompletionRequest, _MESSAGES, raw, "messages")
    finally:
        large_body.BATCH_ITEMS = saved
    expected = whole(raw)
    assert found is not None
    head, dumped = found
    head._dumped_messages = dumped
    assert head.inbound == expected.inbound


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"m","messages":[{"role":"user","content":"a"},{"role":"bad","content":"b"}]}',
        b'{"model":"m","messages":[{"role":"user","content":"a"},{"role":"user"}]}',
        b'{"model":"m","messages":[{"role":"user","content":"a"},3]}',
        b'{"model":"m","messages":[{"role":"user","content":"a"} {"role":"user","content":"b"}]}',
        b'{"model":"m","messages":[{"role":"user","content":"a"},{"role":"user","content":"b}]}',
        b'{"model":"m","messages":[],"messages":[{"role":"user","content":"b"}]}',
        b'[{"model":"m","messages":[{"role":"user","content":"a"}]}]',
        b'{"model":"m","messages":[{"role":"user","content":"a"}]} x',
        b'{"model":5,"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}]}',
    ],
)
def test_anything_invalid_is_left_to_the_whole_body_validation(raw: bytes) -> None:
    assert large_body.validate_large(ChatCompletionRequest, _MESSAGES, raw, "messages") is None


def test_a_large_body_of_many_messages_parses_as_before() -> None:
    messages = [{"role": "user", "content": f'message {i} \\ " }}'} for i in range(20_000)]
    raw = orjson.dumps({"model": "fake-fast", "messages": messages, "stream": True})
    assert len(raw) > large_body.LARGE_BODY_BYTES
    parsed = parse_request(raw)
    assert parsed._dumped_messages is not None  # the batched path was taken
    assert parsed.inbound == whole(raw).inbound


def test_a_large_invalid_body_names_the_field_as_before() -> None:
    messages: list[Any] = [{"role": "user", "content": "x" * 100}] * 5000
    messages[4321] = {"role": "robot", "content": "x"}
    raw = orjson.dumps({"model": "fake-fast", "messages": messages})
    with pytest.raises(BadRequest) as caught:
        parse_request(raw)
    assert caught.value.param == "messages[4321].role"
