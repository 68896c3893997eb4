"""OpenAIProvider against a real fake upstream on loopback (the real openai SDK inside)."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from config.models import UpstreamConfig
from providers.base import ChatRequest
from providers.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
)
from providers.events import Accepted, Finish, StreamEvent, TextDelta, ToolCallDelta, Usage
from providers.openai.provider import OpenAIProvider, _Chunks
from providers.support.upstream_sse import (
    MAX_EVENT_BYTES,
    SSEEvent,
    SSEParser,
    retry_after_seconds,
)
from tests.support import provider_streams as streams
from tests.support.fakes.openai_upstream import (
    Behaviour,
    FakeOpenAIUpstream,
    ToolCallSpec,
    expected_text,
)

KEY = "sk-test-4f1c0ffee0ddba11"
MESSAGES = [{"role": "user", "content": "Say hello to the tokens"}]
PROMPT_TOKENS = 8  # the fake counts words, plus 3 per message


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIUpstream]:
    async with FakeOpenAIUpstream() as server:
        yield server


@pytest.fixture
async def provider(fake: FakeOpenAIUpstream) -> AsyncIterator[OpenAIProvider]:
    upstream = UpstreamConfig(base_url=fake.base_url, api_key=SecretStr(KEY), connect_timeout=5)
    instance = OpenAIProvider(upstream)
    yield instance
    await instance.aclose()


def request(**kwargs: Any) -> ChatRequest:
    return ChatRequest(model=kwargs.pop("model", "gpt-fake"), messages=MESSAGES, **kwargs)


async def collect(provider: OpenAIProvider, req: ChatRequest | None = None) -> list[StreamEvent]:
    return await streams.collect(provider, req or request())


async def failure(provider: OpenAIProvider, req: ChatRequest | None = None) -> ProviderError:
    return await streams.failure(provider, req or request())


consume, text_of = streams.consume, streams.text_of


async def test_streams_text_then_finish_then_usage(fake: FakeOpenAIUpstream, provider: Any) -> None:
    fake.script = [Behaviour(tokens=12, ping_every=5)]
    events = await collect(provider)
    assert text_of(events) == expected_text(12)
    assert all(isinstance(e, TextDelta) for e in events[:-2])
    assert events[-2:] == [Finish("stop"), Usage(PROMPT_TOKENS, completion_tokens=12)]


async def test_sends_model_messages_usage_option_and_passes_params_through(
    fake: FakeOpenAIUpstream,
) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    params = {
        "temperature": 0.3,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "tools": tools,
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "user": "u-1",
        "logprobs": True,
        "n": 3,
    }
    upstream = UpstreamConfig(
        base_url=fake.base_url, api_key=SecretStr(KEY), headers=(("x-t", "1"),)
    )
    provider = OpenAIProvider(upstream)
    try:
        await collect(provider, request(model="m-up", max_tokens=7, seed=42, params=params))
    finally:
        await provider.aclose()
    sent = fake.requests[0]
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.headers["x-t"] == "1"
    body = sent.json
    assert body["model"] == "m-up"
    assert body["messages"] == MESSAGES
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 7
    assert body["seed"] == 42
    assert "n" not in body
    for key, value in params.items():
        if key != "n":
            assert body[key] == value


async def test_omits_unset_optional_fields_and_works_without_api_key(
    fake: FakeOpenAIUpstream,
) -> None:
    provider = OpenAIProvider(UpstreamConfig(base_url=fake.base_url))
    try:
        events = await collect(provider)
    finally:
        await provider.aclose()
    assert events[-2] == Finish("stop")
    assert not {"max_tokens", "seed", "temperature"} & fake.requests[0].json.keys()


async def test_tool_call_deltas(fake: FakeOpenAIUpstream, provider: Any) -> None:
    calls = (
        ToolCallSpec("call_a", "get_weather", '{"city": "Paris"}'),
        ToolCallSpec("call_b", "get_time", '{"tz": "UTC"}'),
    )
    fake.script = [Behaviour(tokens=0, tool_calls=calls)]
    events = await collect(provider)
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert deltas[0] == ToolCallDelta(0, "call_a", "get_weather", "")
    for n, call in enumerate(calls):
        mine = [d for d in deltas if d.index == n]
        assert (mine[0].id, mine[0].name) == (call.id, call.name)
        assert all(d.id is None and d.name is None for d in mine[1:])
        assert "".join(d.arguments for d in mine) == call.arguments
    assert Finish("tool_calls") in events


@pytest.mark.parametrize(
    ("upstream_reason", "reason"),
    [("stop", "stop"), ("length", "length"), ("content_filter", "content_filter"), ("eos", "stop")],
)
async def test_finish_reason_mapping(
    fake: FakeOpenAIUpstream, provider: Any, upstream_reason: str, reason: str
) -> None:
    fake.script = [Behaviour(tokens=2, finish_reason=upstream_reason)]
    events = await collect(provider)
    assert [e for e in events if isinstance(e, Finish)] == [Finish(reason)]  # type: ignore[arg-type]


async def test_no_usage_event_when_upstream_sends_none(
    fake: FakeOpenAIUpstream, provider: Any
) -> None:
    fake.script = [Behaviour(tokens=3, usage=False)]
    events = await collect(provider)
    assert events[-1] == Finish("stop")
    assert not any(isinstance(e, Usage) for e in events)


async def test_finish_without_done_marker_is_a_clean_end(
    fake: FakeOpenAIUpstream, provider: Any
) -> None:
    fake.script = [Behaviour(tokens=3, done=False)]
    events = await collect(provider)
    assert events[-2:] == [Finish("stop"), Usage(PROMPT_TOKENS, completion_tokens=3)]


async def test_connection_is_reused_across_requests(
    fake: FakeOpenAIUpstream, provider: Any
) -> None:
    for _ in range(3):
        await collect(provider)
    # The body's end is read after [DONE] only briefly; allow one miss on a slow machine.
    assert len({r.peer for r in fake.requests}) < 3


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, ProviderBadRequest),
        (401, ProviderAuthError),
        (403, ProviderAuthError),
        (404, ProviderBadRequest),
        (422, ProviderBadRequest),
        (429, ProviderRateLimited),
        (500, ProviderUnavailable),
        (503, ProviderUnavailable),
    ],
)
async def test_status_errors_map_by_type(
    fake: FakeOpenAIUpstream, provider: Any, status: int, error_type: type[ProviderError]
) -> None:
    fake.script = [Behaviour(status=status, error_message="the upstream's own words")]
    error = await failure(provider)
    assert type(error) is error_type
    assert error.status == status
    if status != 401:
        assert "the upstream's own words" in error.message
    assert len(fake.requests) == 1  # the SDK did not retry


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ((("Retry-After", "7"),), 7.0),
        ((("retry-after-ms", "1500"), ("Retry-After", "2")), 1.5),
        ((), None),
    ],
)
async def test_rate_limit_carries_retry_after(
    fake: FakeOpenAIUpstream, provider: Any, headers: Any, expected: float | None
) -> None:
    fake.script = [Behaviour(status=429, headers=headers)]
    error = await failure(provider)
    assert isinstance(error, ProviderRateLimited)
    assert error.retry_after == expected


async def test_rate_limit_retry_after_as_http_date(fake: FakeOpenAIUpstream, provider: Any) -> None:
    fake.script = [Behaviour(status=429, retry_after=email.utils.formatdate(time.time() + 60))]
    error = await failure(provider)
    assert isinstance(error, ProviderRateLimited)
    assert error.retry_after is not None
    assert 30 < error.retry_after <= 61


async def test_api_key_never_in_error_messages(fake: FakeOpenAIUpstream, provider: Any) -> None:
    fake.script = [Behaviour(status=401)]  # the fake echoes the key it received
    error = await failure(provider)
    assert isinstance(error, ProviderAuthError)
    assert "Incorrect API key" in error.message
    assert KEY not in str(error)
    assert KEY not in repr(error)
    assert error.__cause__ is None


@pytest.mark.parametrize(
    ("error_type", "expected"),
    [("server_error", ProviderUnavailable), ("rate_limit_exceeded", ProviderRateLimited)],
)
async def test_in_band_error_after_some_tokens(
    fake: FakeOpenAIUpstream, provider: Any, error_type: str, expected: type[ProviderError]
) -> None:
    fake.script = [Behaviour(tokens=5, error_after=2, error_type=error_type)]
    events: list[StreamEvent] = []
    with pytest.raises(expected, match="fake in-band error"):
        await consume(provider.stream(request()), events)
    assert text_of(events) == expected_text(2)


@pytest.mark.parametrize(
    ("broken", "message"),
    [(b"{not json", "invalid JSON chunk"), (b'{"choices":[{"delta":{"content":7}}]}', "malformed")],
)
async def test_text_before_a_broken_chunk_in_the_same_read_comes_first(
    fake: FakeOpenAIUpstream, provider: Any, broken: bytes, message: str
) -> None:
    """Each read is parsed in one go: the text before a broken chunk still goes out,
    then the reply fails (one write, so usually one read; either way the same)."""
    good = b'{"choices":[{"index":0,"delta":{"content":"kept"}}]}'
    fake.script = [Behaviour(raw=(good + b"\n\ndata: " + broken,))]
    events: list[StreamEvent] = []
    with pytest.raises(ProviderUnavailable, match=message):
        await consume(provider.stream(request()), events)
    assert events == [TextDelta("kept")]


_CONTENT = {"choices": [{"index": 0, "delta": {"content": "ok"}}]}
_FINISH = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}


async def test_chunks_that_are_not_objects_are_skipped(
    fake: FakeOpenAIUpstream, provider: Any
) -> None:
    fake.script = [Behaviour(raw=(_CONTENT, 7, b"[]", b'"text"', None, _CONTENT, _FINISH))]
    events: list[StreamEvent] = []
    await consume(provider.stream(request()), events)
    assert events == [TextDelta("ok"), TextDelta("ok"), Finish("stop")]


@pytest.mark.parametrize(
    "broken",
    [
        {"choices": [{"delta": "text"}]},
        {"choices": [{"delta": {"content": ["a"]}}]},
        {"choices": [{"finish_reason": 1}]},
        {"choices": {"0": {"delta": {"content": "a"}}}},
        {"choices": [{"delta": {"tool_calls": {"index": 0}}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": True}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": "0"}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 128}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": -1}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"function": {"name": 3}}]}}]},
        b'{"usage":{"prompt_tokens":1e400}}',
    ],
)
async def test_a_mistyped_chunk_fails_the_reply_as_malformed(
    fake: FakeOpenAIUpstream, provider: Any, broken: Any
) -> None:
    fake.script = [Behaviour(raw=(_CONTENT, broken, _CONTENT, _FINISH))]
    events: list[StreamEvent] = []
    with pytest.raises(ProviderUnavailable, match="malformed chunk"):
        await consume(provider.stream(request()), events)
    assert events == [TextDelta("ok")]


async def test_unknown_chunk_fields_pass_unread(fake: FakeOpenAIUpstream, provider: Any) -> None:
    """What the gateway does not read (logprobs, fingerprints, new fields) is skipped
    whatever its shape; the fields it reads keep their meaning."""
    chunk = {
        "id": 7,
        "system_fingerprint": {"nested": [1, 2]},
        "obfuscation": "abc",
        "choices": [
            {
                "index": "zero",
                "delta": {"content": "ok", "role": 5, "refusal": None, "extra": [{}]},
                "logprobs": {"content": [{"token": "ok", "logprob": -0.1, "bytes": [111]}]},
            }
        ],
    }
    fake.script = [Behaviour(raw=(chunk, _FINISH, {"choices": [], "usage": {"x": 1}}))]
    events: list[StreamEvent] = []
    await consume(provider.stream(request()), events)
    assert events == [TextDelta("ok"), Finish("stop"), Usage(prompt_tokens=0, completion_tokens=0)]


async def test_an_error_field_without_choices_is_an_in_band_error(
    fake: FakeOpenAIUpstream, provider: Any
) -> None:
    fake.script = [Behaviour(raw=(_CONTENT, {"error": None}))]
    with pytest.raises(ProviderUnavailable, match="upstream error: None"):
        await consume(provider.stream(request()), [])


async def test_waiting_for_the_next_read_holds_nothing_of_the_last(
    fake: FakeOpenAIUpstream, provider: Any
) -> None:
    """Regression (memory per open stream): while the next read waited, the stream's
    frame still held the last read's bytes and its parsed chunk (about 1.5 KB per
    open stream)."""
    fake.script = [Behaviour(tokens=5, stall_after=2)]
    events = provider.stream(request())
    waiting = None
    try:
        assert type(await anext(events)) is Accepted
        got = [await anext(events), await anext(events)]
        assert [type(e) for e in got] == [TextDelta, TextDelta]
        waiting = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        held = {
            name: type(value).__name__
            for name, value in events.ag_frame.f_locals.items()
            if isinstance(value, bytes | bytearray | dict)
        }
        assert held == {}
    finally:
        if waiting is not None:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
        await events.aclose()


@pytest.mark.parametrize("done", [True, False])
async def test_stream_ending_without_finish_is_unavailable(
    fake: FakeOpenAIUpstream, provider: Any, done: bool
) -> None:
    fake.script = [Behaviour(tokens=3, finish=False, done=done)]
    error = await failure(provider)
    assert type(error) is ProviderUnavailable
    assert "without a finish" in error.message


# --- the incremental SSE parser the provider reads with ---

STREAM = (
    b"\xef\xbb\xbf: comment\r\n"
    b'event: message_start\r\ndata: {"a": 1}\r\n\r\n'
    b"data:no-space\n"
    b"data:  two\n\n"
    b"id: 7\nretry: 10\n\n"
    b"data\n\n"
    b"data: cr\r\r"
    b"data: tail-without-blank-line\n"
)
EXPECTED = [
    SSEEvent("message_start", b'{"a": 1}'),
    SSEEvent("message", b"no-space\n two"),
    SSEEvent("message", b""),
    SSEEvent("message", b"cr"),
]


def test_sse_parser_whole_stream() -> None:
    assert SSEParser().feed(STREAM) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64])
def test_sse_parser_any_chunking(size: int) -> None:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for start in range(0, len(STREAM), size):
        events += parser.feed(STREAM[start : start + size])
    assert events == EXPECTED


def test_sse_parser_splits_crlf_across_chunks_without_an_extra_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\ndata: b\r") == []
    assert parser.feed(b"\n\r\n") == [SSEEvent("message", b"a\nb")]


_PIECES = st.sampled_from(
    [
        *(b"data: ", b"data: x", b'data: {"a":1}', b"\n", b"\n\n", b"\r", b"event: e\n", b": c\n"),
        b"x",
        # The BOM and its first bytes: the shortcut also takes a stream's first read.
        *(b"\xef\xbb\xbf", b"\xef", b"\xbb\xbf"),
    ]
)


class _LineLoopOnly(SSEParser):
    """The parser without its shortcut: every chunk through the line loop."""

    __slots__ = ()

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._carry + chunk if self._carry else chunk
        return self._lines(buf)


@given(st.lists(st.lists(_PIECES, max_size=6).map(b"".join), max_size=8))
def test_sse_parser_fast_path_agrees_with_the_line_loop(chunks: list[bytes]) -> None:
    """Whole one-line events take a shortcut, which must change nothing, however the
    bytes are cut."""
    fast, loop, datas = SSEParser(), _LineLoopOnly(), SSEParser()
    got = [event for chunk in chunks for event in fast.feed(chunk)]
    assert got == [event for chunk in chunks for event in loop.feed(chunk)]
    assert [data for chunk in chunks for data in datas.feed_data(chunk)] == [e.data for e in got]
    data = b"".join(chunks)
    bytewise = SSEParser()
    assert got == [event for i in range(len(data)) for event in bytewise.feed(data[i : i + 1])]


def test_sse_parser_lone_event_shortcut_waits_for_a_started_or_carried_event() -> None:
    """A read that is exactly one ``data:`` event skips the parser, unless an event
    is under way: a carried partial line, a data line already read, or the BOM check."""
    parser = SSEParser()
    assert parser.feed_data(b"data: a\n\n") == [b"a"]  # the first read: BOM check
    assert parser.feed_data(b"data: b\n\n") == [b"b"]
    assert parser.feed_data(b"data: c") == []
    assert parser.feed_data(b"data: d\n\n") == [b"cdata: d"]
    assert parser.feed_data(b"data: e\n") == []
    assert parser.feed_data(b"data: f\n\n") == [b"e\nf"]
    assert parser.feed_data(b"data: g\r\n\n") == [b"g"]
    assert parser.feed_data(b"data: h\n\n") == [b"h"]


def test_sse_parser_first_read_of_a_burst_skips_the_bom_and_takes_the_shortcut() -> None:
    """A fast upstream's whole reply may come in the first read: after the BOM check,
    its whole one-line events take the shortcut (no event tuples for ``feed_data``)."""
    burst = b"\xef\xbb\xbfdata: a\n\ndata: b\n\ndata: [DONE]\n\n"
    assert SSEParser().feed_data(burst) == [b"a", b"b", b"[DONE]"]
    assert _LineLoopOnly().feed(burst) == SSEParser().feed(burst)
    parser = SSEParser()
    assert parser.feed_data(b"\xef\xbb") == []
    assert parser.feed_data(b"\xbfdata: a\n\ndata: b") == [b"a"]
    assert parser.feed_data(b"\n\n") == [b"b"]


def test_sse_parser_fast_path_keeps_a_pending_event_name() -> None:
    parser = SSEParser()
    assert parser.feed(b"event: delta\n") == []
    assert parser.feed(b"data: x\n\n") == [SSEEvent("delta", b"x")]
    assert parser.feed(b"data: y\n\n") == [SSEEvent("message", b"y")]


def test_retry_after_ignores_garbage() -> None:
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({"retry-after": "inf"}) is None
    assert retry_after_seconds({"retry-after": "-3"}) == 0.0


def test_sse_parser_bounds_an_event_that_never_ends() -> None:
    """A hostile upstream's endless line: memory grows to the bound, then the reply
    fails (and each read does not copy an ever longer carry past it)."""
    parser = SSEParser()
    piece = b"x" * 65536
    assert parser.feed(b"data: ") == []
    with pytest.raises(ProviderUnavailable, match="over 4 MiB"):
        for _ in range(100):
            assert parser.feed(piece) == []
    # Just under the bound, the same event is whole once its blank line comes.
    parser = SSEParser()
    size = MAX_EVENT_BYTES - 100
    events = [
        e for part in range(0, size, 65536) for e in parser.feed(b"x" * min(65536, size - part))
    ]
    assert events == []
    assert parser.feed(b"\n\n") == []  # not a data line: no event, nothing kept
    assert parser.feed(b"data: " + b"y" * size + b"\n\n") == [SSEEvent("message", b"y" * size)]


async def test_an_upstream_event_over_the_bound_fails_the_reply(
    fake: FakeOpenAIUpstream, provider: Any
) -> None:
    fake.script = [Behaviour(raw=(b"z" * (2 * MAX_EVENT_BYTES),))]
    error = await failure(provider)
    assert type(error) is ProviderUnavailable
    assert "over 4 MiB" in error.message


def _data(delta: dict[str, object], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return orjson.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [choice]})


def test_a_burst_gives_its_first_token_before_the_rest_is_decoded() -> None:
    """A fast upstream's whole reply in the first read: the events up to the first
    token come at once, the rest on the reader's next turn (kept in ``rest``), and
    together they are what decoding the read at once gives."""
    burst = [
        _data({"role": "assistant", "content": ""}),
        _data({"content": "Hel"}),
        _data({"content": "lo"}),
        _data({}, "stop"),
        b"[DONE]",
    ]
    chunks = _Chunks()
    first, error = chunks.events_of(burst)
    assert (first, error) == ([TextDelta("Hel")], None)
    assert chunks.rest == burst[2:]
    rest, error = chunks.events_of(chunks.rest)
    assert (rest, error) == ([TextDelta("lo"), Finish("stop")], None)
    assert chunks.done
    whole = _Chunks()
    whole.waiting = False  # as decoded before: the read at once
    assert whole.events_of(burst) == (first + rest, None)
    # After the first event, reads are decoded whole, nothing kept.
    later = _Chunks()
    later.events_of([_data({"content": "a"})])
    assert later.events_of(burst[1:3]) == ([TextDelta("Hel"), TextDelta("lo")], None)
    assert later.rest is None
