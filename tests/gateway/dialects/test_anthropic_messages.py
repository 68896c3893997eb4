"""POST /v1/messages against a live gateway: recorded bytes, the SDK's types, the SDK itself."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from anthropic import AsyncAnthropic
from anthropic.types import RawMessageStreamEvent
from pydantic import TypeAdapter

from tests.support.fakes.anthropic_upstream import FakeAnthropicUpstream
from tests.support.fakes.openai_upstream import (
    Behaviour,
    FakeOpenAIUpstream,
    ToolCallSpec,
    expected_text,
)
from tests.support.named_sse import NamedStream, post

EVENTS: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city"],
    },
}
HI = [{"role": "user", "content": "Hello there"}]


def sdk(url: str, **kwargs: Any) -> AsyncAnthropic:
    return AsyncAnthropic(base_url=url, api_key="sk-ant-unused", max_retries=0, **kwargs)


async def stream(url: str, **body: Any) -> NamedStream:
    full = {"model": "fake-fast", "max_tokens": 1000, "messages": HI, "stream": True, **body}
    got = await post(url, "/v1/messages", full, headers={"anthropic-version": "2023-06-01"})
    assert got.status == 200, got.raw
    for name, data in got.events:
        assert data["type"] == name
        if name not in ("ping", "error"):  # the SDK's union leaves these two out
            EVENTS.validate_python(data)
    return got


async def test_text_stream_events_in_anthropic_order(gateway_url: str) -> None:
    got = await stream(gateway_url, fake={"reply_tokens": 5})
    assert got.names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 5,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert got.raw.startswith(
        b'retry: 1000\nid: 1\nevent: message_start\ndata: {"type":"message_start","message":'
    )
    assert b'event: ping\ndata: {"type":"ping"}\n\n' in got.raw
    assert got.raw.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    delta = got.events[3][1]
    assert delta["index"] == 0
    assert delta["delta"]["type"] == "text_delta"
    end = got.events[-2][1]
    assert end["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert end["usage"]["output_tokens"] == 5
    assert end["usage"]["input_tokens"] > 0


async def test_max_tokens_is_required_and_errors_are_anthropic_shaped(gateway_url: str) -> None:
    missing = await post(gateway_url, "/v1/messages", {"model": "fake-fast", "messages": HI})
    assert missing.status == 400
    assert missing.events[0][1]["type"] == "error"
    assert missing.events[0][1]["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in missing.events[0][1]["error"]["message"]
    unknown = await post(
        gateway_url, "/v1/messages", {"model": "nope", "max_tokens": 5, "messages": HI}
    )
    assert unknown.status == 404
    assert unknown.events[0][1]["error"]["type"] == "not_found_error"
    async with sdk(gateway_url) as client:
        with pytest.raises(anthropic.BadRequestError):
            # The SDK insists on max_tokens itself; an invalid one reaches the gateway.
            await client.messages.create(model="fake-fast", max_tokens=0, messages=HI)  # type: ignore[arg-type]
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.create(model="nope", max_tokens=5, messages=HI)  # type: ignore[arg-type]


async def test_in_band_error_mid_stream(gateway_url: str) -> None:
    got = await stream(gateway_url, fake={"fail_after": 3})
    assert got.names.count("content_block_delta") == 3
    assert got.names[-1] == "error"
    assert "message_stop" not in got.names
    assert got.events[-1][1]["error"]["type"] == "api_error"
    async with sdk(gateway_url) as client:
        received: list[str] = []
        with pytest.raises(anthropic.APIStatusError, match="injected"):
            async with client.messages.stream(
                model="fake-fast",
                max_tokens=100,
                messages=HI,  # type: ignore[arg-type]
                extra_body={"fake": {"fail_after": 3}},
            ) as helper:
                async for text in helper.text_stream:
                    received.append(text)
    assert len(received) == 3


@pytest.mark.parametrize("header", ["x-api-key", "bearer"])
async def test_sdk_stream_create_and_helper(gateway_url: str, header: str) -> None:
    kwargs: dict[str, Any] = (
        {"api_key": "k"} if header == "x-api-key" else {"api_key": None, "auth_token": "t"}
    )
    client = AsyncAnthropic(base_url=gateway_url, max_retries=0, **kwargs)
    async with client:
        events = await client.messages.create(
            model="fake-fast",
            max_tokens=1000,
            messages=HI,
            stream=True,  # type: ignore[arg-type]
        )
        deltas = [
            e.delta.text
            async for e in events
            if e.type == "content_block_delta" and e.delta.type == "text_delta"
        ]
        async with client.messages.stream(
            model="fake-fast",
            max_tokens=1000,
            messages=HI,  # type: ignore[arg-type]
        ) as helper:
            streamed = "".join([t async for t in helper.text_stream])
            final = await helper.get_final_message()
        whole = await client.messages.create(model="fake-fast", max_tokens=1000, messages=HI)  # type: ignore[arg-type]
    assert streamed == "".join(deltas)
    assert whole.content[0].type == "text"
    assert whole.content[0].text == streamed == final.content[0].text  # type: ignore[union-attr]
    assert whole.stop_reason == final.stop_reason == "end_turn"
    assert whole.usage.output_tokens == final.usage.output_tokens == len(deltas)
    assert whole.usage.input_tokens == final.usage.input_tokens > 0


async def test_max_tokens_stop_reason(gateway_url: str) -> None:
    async with sdk(gateway_url) as client:
        whole = await client.messages.create(model="fake-fast", max_tokens=4, messages=HI)  # type: ignore[arg-type]
    assert whole.stop_reason == "max_tokens"
    assert whole.usage.output_tokens == 4


async def test_stop_sequences(gateway_url: str) -> None:
    async with sdk(gateway_url) as client:
        plain = await client.messages.create(model="fake-fast", max_tokens=1000, messages=HI)  # type: ignore[arg-type]
        text = plain.content[0].text  # type: ignore[union-attr]
        stop = text[40:46]
        async with client.messages.stream(
            model="fake-fast",
            max_tokens=1000,
            messages=HI,
            stop_sequences=[stop, "zzzz"],  # type: ignore[arg-type]
        ) as helper:
            streamed = "".join([t async for t in helper.text_stream])
            final = await helper.get_final_message()
        whole = await client.messages.create(
            model="fake-fast",
            max_tokens=1000,
            messages=HI,
            stop_sequences=[stop],  # type: ignore[arg-type]
        )
    assert streamed == text[: text.index(stop)]
    assert stop not in streamed
    assert final.stop_reason == whole.stop_reason == "stop_sequence"
    assert final.stop_sequence == whole.stop_sequence == stop
    assert whole.content[0].text == streamed  # type: ignore[union-attr]


async def test_tool_use_round_trip(gateway_url: str) -> None:
    async with sdk(gateway_url) as client:
        async with client.messages.stream(
            model="fake-fast",
            max_tokens=1000,
            messages=[{"role": "user", "content": "Paris?"}],
            tools=[WEATHER],
            tool_choice={"type": "any"},  # type: ignore[list-item]
        ) as helper:
            first = await helper.get_final_message()
        assert first.stop_reason == "tool_use"
        use = first.content[-1]
        assert use.type == "tool_use"
        assert use.name == "get_weather"
        assert isinstance(use.input["city"], str)  # type: ignore[index]
        second = await client.messages.create(
            model="fake-fast",
            max_tokens=1000,
            tools=[WEATHER],  # type: ignore[list-item]
            messages=[
                {"role": "user", "content": "Paris?"},
                {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 C"}],
                },
            ],
        )
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text"


async def test_tool_use_stream_events(gateway_url: str) -> None:
    got = await stream(
        gateway_url, tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"}
    )
    names = got.names
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert got.events[1][1]["content_block"]["type"] == "tool_use"
    assert set(names[3:-3]) == {"content_block_delta"}
    assert {d["delta"]["type"] for n, d in got.events if n == "content_block_delta"} == {
        "input_json_delta"
    }
    assert got.events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_anthropic_upstream(make_gateway: Any) -> None:
    async with FakeAnthropicUpstream(Behaviour(tokens=6)) as fake:
        url = await make_gateway(
            models=[
                {
                    "name": "claude",
                    "provider": "anthropic",
                    "base_url": fake.base_url,
                    "api_key": "ak-x",
                }
            ]
        )
        async with (
            sdk(url) as client,
            client.messages.stream(
                model="claude",
                max_tokens=50,
                system="Be brief.",
                messages=HI,  # type: ignore[arg-type]
            ) as helper,
        ):
            text = "".join([t async for t in helper.text_stream])
            final = await helper.get_final_message()
    assert text == expected_text(6)
    assert final.usage.output_tokens == 6
    sent = fake.requests[0].json
    assert sent["system"] == "Be brief."
    assert sent["max_tokens"] == 50


async def test_openai_upstream_tool_call(make_gateway: Any) -> None:
    call = ToolCallSpec(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    async with FakeOpenAIUpstream(Behaviour(tokens=0, tool_calls=(call,))) as fake:
        url = await make_gateway(
            models=[
                {"name": "up", "provider": "openai", "base_url": fake.base_url, "api_key": "sk-x"}
            ]
        )
        async with sdk(url) as client:
            message = await client.messages.create(
                model="up",
                max_tokens=50,
                messages=HI,
                tools=[WEATHER],  # type: ignore[arg-type, list-item]
            )
    assert message.stop_reason == "tool_use"
    assert message.content[-1].type == "tool_use"
    assert message.content[-1].input == {"city": "Paris"}  # type: ignore[union-attr]
    sent = fake.requests[0].json
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["max_tokens"] == 50
