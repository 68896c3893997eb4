"""AnthropicProvider against a real fake Messages API upstream on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from config.models import UpstreamConfig
from providers.anthropic.messages import request_body, translate_messages
from providers.anthropic.provider import AnthropicProvider
from providers.base import ChatRequest
from providers.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
)
from providers.events import Finish, StreamEvent, ToolCallDelta, Usage
from tests.support import provider_streams as streams
from tests.support.fakes.anthropic_upstream import (
    Behaviour,
    FakeAnthropicUpstream,
    ToolCallSpec,
    expected_text,
)

KEY = "sk-ant-test-0123456789abcdef"
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hello"},
]


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropicUpstream]:
    async with FakeAnthropicUpstream() as server:
        yield server


@pytest.fixture
async def provider(fake: FakeAnthropicUpstream) -> AsyncIterator[AnthropicProvider]:
    upstream = UpstreamConfig(base_url=fake.base_url, api_key=SecretStr(KEY), connect_timeout=5)
    instance = AnthropicProvider(upstream)
    yield instance
    await instance.aclose()


def request(**kwargs: Any) -> ChatRequest:
    messages = kwargs.pop("messages", MESSAGES)
    return ChatRequest(model=kwargs.pop("model", "claude-fake"), messages=messages, **kwargs)


async def collect(provider: AnthropicProvider, req: ChatRequest | None = None) -> list[StreamEvent]:
    return await streams.collect(provider, req or request())


async def failure(provider: AnthropicProvider, req: ChatRequest | None = None) -> ProviderError:
    return await streams.failure(provider, req or request())


consume, text_of = streams.consume, streams.text_of


async def test_streams_text_then_finish_then_usage(
    fake: FakeAnthropicUpstream, provider: Any
) -> None:
    fake.script = [Behaviour(tokens=9, ping_every=4)]
    events = await collect(provider)
    assert text_of(events) == expected_text(9)
    # The fake counts system words, plus words + 3 per message: 2 + (2 + 3).
    assert events[-2:] == [Finish("stop"), Usage(prompt_tokens=7, completion_tokens=9)]


async def test_request_headers_and_body(fake: FakeAnthropicUpstream, provider: Any) -> None:
    params = {"temperature": 0.2, "top_p": 0.8, "stop": "END", "seed": 5, "user": "u-9"}
    await collect(provider, request(model="claude-up", max_tokens=50, params=params))
    sent = fake.requests[0]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.json == {
        "model": "claude-up",
        "max_tokens": 50,
        "stream": True,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}],
        "temperature": 0.2,
        "top_p": 0.8,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-9"},
    }


async def test_max_tokens_defaults_to_4096_and_base_url_may_end_in_v1(
    fake: FakeAnthropicUpstream,
) -> None:
    upstream = UpstreamConfig(base_url=fake.base_url + "/v1/", headers=(("x-extra", "1"),))
    provider = AnthropicProvider(upstream)
    try:
        await collect(provider)
    finally:
        await provider.aclose()
    sent = fake.requests[0]
    assert sent.json["max_tokens"] == 4096
    assert sent.headers["x-extra"] == "1"
    assert "x-api-key" not in sent.headers


async def test_tool_call_deltas_are_numbered_from_zero(
    fake: FakeAnthropicUpstream, provider: Any
) -> None:
    calls = (
        ToolCallSpec("toolu_1", "lookup", '{"q": "tokens"}'),
        ToolCallSpec("toolu_2", "f", "{}"),
    )
    fake.script = [Behaviour(tokens=2, tool_calls=calls)]
    events = await collect(provider)
    assert text_of(events) == expected_text(2)
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert deltas[0] == ToolCallDelta(0, "toolu_1", "lookup", "")
    for n, call in enumerate(calls):
        mine = [d for d in deltas if d.index == n]
        assert (mine[0].id, mine[0].name) == (call.id, call.name)
        assert "".join(d.arguments for d in mine) == call.arguments
    assert events[-2:] == [Finish("tool_calls"), Usage(7, 2)]


@pytest.mark.parametrize(
    ("stop_reason", "reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
    ],
)
async def test_stop_reason_mapping(
    fake: FakeAnthropicUpstream, provider: Any, stop_reason: str, reason: str
) -> None:
    fake.script = [Behaviour(tokens=1, finish_reason=stop_reason)]
    events = await collect(provider)
    assert [e for e in events if isinstance(e, Finish)] == [Finish(reason)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, ProviderBadRequest),
        (401, ProviderAuthError),
        (403, ProviderAuthError),
        (404, ProviderBadRequest),
        (413, ProviderBadRequest),
        (429, ProviderRateLimited),
        (500, ProviderUnavailable),
        (529, ProviderUnavailable),
    ],
)
async def test_status_errors_map_by_status(
    fake: FakeAnthropicUpstream, provider: Any, status: int, error_type: type[ProviderError]
) -> None:
    fake.script = [Behaviour(status=status, error_message="the upstream's own words")]
    error = await failure(provider)
    assert type(error) is error_type
    assert error.status == status
    if status != 401:
        assert "the upstream's own words" in error.message


async def test_rate_limit_carries_retry_after(fake: FakeAnthropicUpstream, provider: Any) -> None:
    fake.script = [Behaviour(status=429, retry_after="12")]
    error = await failure(provider)
    assert isinstance(error, ProviderRateLimited)
    assert error.retry_after == 12.0


async def test_api_key_never_in_error_messages(fake: FakeAnthropicUpstream, provider: Any) -> None:
    fake.script = [Behaviour(status=401)]  # the fake echoes the key it received
    error = await failure(provider)
    assert "invalid x-api-key" in error.message
    assert KEY not in str(error)
    assert KEY not in repr(error)


@pytest.mark.parametrize(
    ("error_type", "expected"),
    [
        ("overloaded_error", ProviderUnavailable),
        ("api_error", ProviderUnavailable),
        ("rate_limit_error", ProviderRateLimited),
    ],
)
async def test_in_band_error_event(
    fake: FakeAnthropicUpstream, provider: Any, error_type: str, expected: type[ProviderError]
) -> None:
    fake.script = [Behaviour(tokens=4, error_after=2, error_type=error_type)]
    events: list[StreamEvent] = []
    with pytest.raises(expected, match="fake in-band error"):
        await consume(provider.stream(request()), events)
    assert text_of(events) == expected_text(2)


async def test_stream_ending_without_message_stop_is_unavailable(
    fake: FakeAnthropicUpstream, provider: Any
) -> None:
    fake.script = [Behaviour(tokens=3, finish=False)]
    error = await failure(provider)
    assert type(error) is ProviderUnavailable
    assert "message_stop" in error.message


async def test_untranslatable_request_fails_before_sending(
    fake: FakeAnthropicUpstream, provider: Any
) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]}]
    error = await failure(provider, request(messages=messages))
    assert type(error) is ProviderBadRequest
    assert fake.requests == []


async def test_translated_conversation_is_accepted_upstream(
    fake: FakeAnthropicUpstream, provider: Any
) -> None:
    events = await collect(provider, request(messages=CONVERSATION))
    assert events[-2] == Finish("stop")
    assert fake.requests[0].json["messages"] == TRANSLATED


# --- request translation (pure) ---

CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "Rule one."},
    {"role": "developer", "content": [{"type": "text", "text": "Rule two."}]},
    {"role": "user", "content": "Add things."},
    {"role": "user", "content": [{"type": "text", "text": "Please."}]},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "1"},
    {"role": "user", "content": "Thanks."},
    {"role": "assistant", "content": ""},
]
TRANSLATED = [
    {
        "role": "user",
        "content": [{"type": "text", "text": "Add things."}, {"type": "text", "text": "Please."}],
    },
    {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "call_1", "name": "add", "input": {"a": 1}}],
    },
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "1"},
            {"type": "text", "text": "Thanks."},
        ],
    },
]


def test_translate_messages() -> None:
    system, messages = translate_messages(CONVERSATION)
    assert system == "Rule one.\n\nRule two."
    assert messages == TRANSLATED


def test_translate_images() -> None:
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.jpg"}},
    ]
    _, messages = translate_messages([{"role": "user", "content": parts}])
    assert messages[0]["content"][1:] == [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.invalid/cat.jpg"}},
    ]


def test_unsupported_role_is_a_bad_request() -> None:
    with pytest.raises(ProviderBadRequest, match="role"):
        translate_messages([{"role": "function", "content": "x"}])


TOOL = {
    "type": "function",
    "function": {"name": "add", "description": "Adds.", "parameters": {"type": "object"}},
}


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        (None, None, None),
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "add"}}, None, {"type": "tool", "name": "add"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ],
)
def test_tools_and_tool_choice(choice: Any, parallel: Any, expected: Any) -> None:
    params: dict[str, Any] = {"tools": [TOOL], "stop": ["a", "b"]}
    if choice is not None:
        params["tool_choice"] = choice
    if parallel is not None:
        params["parallel_tool_calls"] = parallel
    body = request_body(request(params=params))
    assert body["tools"] == [
        {"name": "add", "description": "Adds.", "input_schema": {"type": "object"}}
    ]
    assert body.get("tool_choice") == expected
    assert body["stop_sequences"] == ["a", "b"]
