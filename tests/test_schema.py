"""Outbound chunk bytes match the OpenAI schema (as the openai SDK types define it)."""

from __future__ import annotations

import orjson
import pytest
from openai.types.chat import ChatCompletionChunk

from gateway import sse
from gateway.schema import ChunkEncoder
from providers.events import ToolCallDelta

TEXTS = ["hi", "", " multi\nline\r\n", 'quote " and \\ backslash', "😀 中文", "\u2028\u0000"]


@pytest.mark.parametrize("include_usage", [True, False])
def test_every_chunk_validates_against_the_sdk_types(include_usage: bool) -> None:
    encoder = ChunkEncoder(id="chatcmpl-x", created=5, model='m"odel', include_usage=include_usage)
    chunks = [
        encoder.role(),
        *(encoder.content(t) for t in TEXTS),
        encoder.tool_call(ToolCallDelta(index=0, id="c", name="f", arguments='{"a"')),
        encoder.tool_call(ToolCallDelta(index=0, arguments="}")),
        encoder.finish("length"),
        encoder.usage(10, 4),
    ]
    for raw in chunks:
        parsed = ChatCompletionChunk.model_validate(orjson.loads(raw))
        assert parsed.id == "chatcmpl-x"
        assert parsed.model == 'm"odel'
        assert parsed.created == 5
        assert parsed.object == "chat.completion.chunk"
        assert ("usage" in orjson.loads(raw)) == (include_usage or raw == chunks[-1])
    texts = [
        ChatCompletionChunk.model_validate_json(c).choices[0].delta.content for c in chunks[1:7]
    ]
    assert texts == TEXTS
    assert ChatCompletionChunk.model_validate_json(chunks[-1]).usage.total_tokens == 14  # type: ignore[union-attr]


@pytest.mark.parametrize("text", TEXTS)
def test_content_event_is_the_framed_content_chunk(text: str) -> None:
    encoder = ChunkEncoder(id="i", created=1, model="m", include_usage=False)
    assert encoder.content_event(text) == sse.data_event(encoder.content(text))
    assert encoder.content_event(text).count(b"\n") == 2
