"""POST /v1/responses against a live gateway: recorded bytes, the SDK's types, the SDK itself."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai import AsyncOpenAI
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from tests.support.fakes.anthropic_upstream import FakeAnthropicUpstream
from tests.support.fakes.openai_upstream import (
    Behaviour,
    FakeOpenAIUpstream,
    ToolCallSpec,
    expected_text,
)
from tests.support.named_sse import NamedStream, post

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["city", "unit", "days"],
        "additionalProperties": False,
    },
}


def sdk(url: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


async def stream(url: str, **body: Any) -> NamedStream:
    got = await post(url, "/v1/responses", {"model": "fake-fast", "stream": True, **body})
    assert got.status == 200, got.raw
    for name, data in got.events:
        assert data["type"] == name
        EVENTS.validate_python(data)  # every event is one of the SDK's stream events
    assert [d["sequence_number"] for _, d in got.events] == list(range(len(got.events)))
    return got


async def test_text_stream_events_in_openai_order(gateway_url: str) -> None:
    got = await stream(gateway_url, input="Hello there", fake={"reply_tokens": 6})
    assert got.names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 6,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert got.raw.startswith(
        b'retry: 1000\nid: 0\nevent: response.created\ndata: {"type":"response.created",'
    )
    deltas = [d["delta"] for n, d in got.events if n == "response.output_text.delta"]
    done = got.events[-1][1]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"][0]["text"] == "".join(deltas)
    assert got.events[-4][1]["text"] == "".join(deltas)
    usage = done["usage"]
    assert usage["output_tokens"] == 6
    assert usage["total_tokens"] == usage["input_tokens"] + 6
    first_delta = next(d for n, d in got.events if n == "response.output_text.delta")
    assert set(first_delta) == {
        "type",
        "sequence_number",
        "item_id",
        "output_index",
        "content_index",
        "delta",
        "logprobs",
    }


async def test_length_ends_incomplete(gateway_url: str) -> None:
    got = await stream(gateway_url, input="Hi", max_output_tokens=3)
    assert got.names[-1] == "response.incomplete"
    response = got.events[-1][1]["response"]
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"
    assert "response.completed" not in got.names


async def test_failure_mid_stream_is_response_failed(gateway_url: str) -> None:
    got = await stream(gateway_url, input="fail please", fake={"fail_after": 3})
    assert got.names[-1] == "response.failed"
    assert got.names.count("response.output_text.delta") == 3
    assert "response.completed" not in got.names
    error = got.events[-1][1]["response"]["error"]
    assert error["code"] == "server_error"
    assert "injected" in error["message"]


async def test_errors_before_the_start_are_openai_json(gateway_url: str) -> None:
    missing = await post(gateway_url, "/v1/responses", {"model": "nope", "input": "x"})
    assert missing.status == 404
    assert missing.events[0][1]["error"]["code"] == "model_not_found"
    bad = await post(gateway_url, "/v1/responses", {"model": "fake-fast", "input": 3})
    assert bad.status == 400
    assert bad.events[0][1]["error"]["param"] == "input"


async def test_function_call_events(gateway_url: str) -> None:
    got = await stream(
        gateway_url, input="Weather in Paris?", tools=[WEATHER], tool_choice="required"
    )
    names = got.names
    assert names[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert set(names[3:-3]) == {"response.function_call_arguments.delta"}
    assert names[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    item = got.events[-2][1]["item"]
    assert item["type"] == "function_call"
    assert item["name"] == "get_weather"
    assert item["call_id"].startswith("call_")


async def test_sdk_stream_and_final_response(gateway_url: str) -> None:
    async with sdk(gateway_url) as client:
        events = await client.responses.create(
            model="fake-fast", input="Hi SDK", stream=True, extra_body={"seed": 3}
        )
        deltas = [e.delta async for e in events if e.type == "response.output_text.delta"]
        async with client.responses.stream(
            model="fake-fast", input="Hi SDK", extra_body={"seed": 3}
        ) as helper:
            final = await helper.get_final_response()
        whole = await client.responses.create(
            model="fake-fast", input="Hi SDK", extra_body={"seed": 3}
        )
    assert final.output_text == "".join(deltas) == whole.output_text
    assert "Hi SDK" in whole.output_text
    assert whole.status == "completed"
    assert whole.usage is not None
    assert whole.usage.output_tokens == len(deltas)


async def test_sdk_function_call_round_trip(gateway_url: str) -> None:
    async with sdk(gateway_url) as client:
        first = await client.responses.create(
            model="fake-fast",
            input="Weather in Paris?",
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "function", "name": "get_weather"},
        )
        call = first.output[0]
        assert call.type == "function_call"
        assert call.name == "get_weather"
        args = json.loads(call.arguments)
        assert set(args) == {"city", "unit", "days"}
        assert args["unit"] in ("celsius", "fahrenheit")
        assert 1 <= args["days"] <= 7
        second = await client.responses.create(
            model="fake-fast",
            tools=[WEATHER],  # type: ignore[list-item]
            input=[
                {"role": "user", "content": "Weather in Paris?"},
                *first.output,  # type: ignore[list-item]
                {"type": "function_call_output", "call_id": call.call_id, "output": "18 C"},
            ],
        )
    assert second.output[0].type == "message"
    assert second.output_text


async def test_openai_upstream(make_gateway: Any) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=7)) as fake:
        url = await make_gateway(
            models=[
                {"name": "up", "provider": "openai", "base_url": fake.base_url, "api_key": "sk-x"}
            ]
        )
        got = await stream(url, model="up", input="hi", instructions="Be brief.")
        async with sdk(url) as client:
            whole = await client.responses.create(model="up", input="hi")
    deltas = [d["delta"] for n, d in got.events if n == "response.output_text.delta"]
    assert "".join(deltas) == expected_text(7) == whole.output_text
    sent = fake.requests[0].json
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]


async def test_anthropic_upstream_tool_call(make_gateway: Any) -> None:
    call = ToolCallSpec(id="toolu_1", name="get_weather", arguments='{"city": "Paris"}')
    async with FakeAnthropicUpstream(Behaviour(tokens=2, tool_calls=(call,))) as fake:
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
        got = await stream(url, model="claude", input="Weather?", tools=[WEATHER])
    assert got.names.count("response.output_item.added") == 2
    final = got.events[-1][1]["response"]
    assert [i["type"] for i in final["output"]] == ["message", "function_call"]
    assert json.loads(final["output"][1]["arguments"]) == {"city": "Paris"}
    assert fake.requests[0].json["tools"][0]["name"] == "get_weather"


@pytest.mark.parametrize("fmt", ["json_object", "json_schema"])
async def test_text_format_json(gateway_url: str, fmt: str) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    text_format: dict[str, Any] = {"type": fmt}
    if fmt == "json_schema":
        text_format |= {"name": "N", "schema": schema, "strict": True}
    async with sdk(gateway_url) as client:
        whole = await client.responses.create(
            model="fake-fast", input="json please", text={"format": text_format}
        )  # type: ignore[typeddict-item]
    value = json.loads(whole.output_text)
    assert isinstance(value, dict)
    if fmt == "json_schema":
        assert isinstance(value["n"], int)
