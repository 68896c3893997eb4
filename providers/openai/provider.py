"""The provider for OpenAI and OpenAI-compatible upstreams (vLLM, Ollama, llama.cpp, ...).

The ``openai`` SDK shapes the request and its errors: it builds the URL, the auth and
its identifying headers once per upstream (``sdk_internals.request_template``), and every
non-2xx answer becomes the SDK's own typed exception (``sdk_internals.status_error``),
translated here by type. The streaming POST itself goes out on the provider's own
HTTP/1.1 client (:mod:`providers.support.http1`, one pool of keep-alive connections per
upstream). The SDK's per-request pipeline (options model, URL parsing, httpx request
and response objects) was 1.8 of the 2.2 ms to a stream's first event
(``python -m tests.benchmarks.provider_ttft``); an aiohttp session under it, the
transport used before, kept about 13 KB per open stream against about 4 KB
(``python -m tests.benchmarks.client_memory``). The body is read as the transport
delivers it and each ``data:`` line decoded with ``msgspec`` into the few typed
fields the gateway reads (the rest of a chunk is skipped, never built).

Non-obvious choices:

* No retries and no read timeout: the gateway owns retries, first-token and idle
  timeouts; the provider applies only the connect timeout.
* A body read to its end returns the connection to the pool; one closed early (the
  client left) closes the connection, which is how the upstream learns to stop.
* The tokenize endpoint (below) is asked on an aiohttp session: once per reply at
  most, off the streaming path.
* ``stream_options.include_usage`` is always asked for; the gateway drops usage the
  client did not ask for.
* ``Usage`` is yielded once, after ``Finish``, when the stream ends, from the last
  ``usage`` the upstream sent (some servers attach it to every chunk).
* A transport error *after* the finish chunk does not fail the reply: it is complete.
* With ``usage_count: tokenize`` (``upstream.tokenize``), a stream that finished
  without ``usage`` ends with a :class:`TokenCount` from the upstream's tokenize
  endpoint (:mod:`providers.openai.tokenize`), asked once the stream's connection is
  back in the pool; none when that failed or timed out.
* API errors are re-raised without their SDK cause: the SDK's message embeds the
  upstream body, which may echo credentials.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any, Final

import aiohttp
import msgspec
import openai
import orjson
from multidict import CIMultiDict

from config.models import UpstreamConfig
from providers.base import ChatRequest
from providers.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    TranslateErrors,
)
from providers.events import (
    ACCEPTED,
    Finish,
    FinishReason,
    StreamEvent,
    TextDelta,
    TokenCount,
    ToolCallDelta,
    Usage,
)
from providers.openai.sdk_internals import request_template, status_error
from providers.openai.tokenize import UpstreamTokenizer
from providers.support.headers import request_headers
from providers.support.http1 import (
    ConnectFailed,
    Connection,
    ConnectionClosed,
    ConnectTimeout,
    HTTP1Client,
    HTTP1Error,
    InvalidResponse,
)
from providers.support.upstream_sse import SSEParser, retry_after_seconds

_FINISH_REASONS: Final[Mapping[str, FinishReason]] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
}
#: Request keys the gateway handles itself or this provider does not support.
_NOT_FORWARDED: Final = frozenset(
    {"n", "stream", "stream_options", "model", "messages", "max_tokens", "seed"}
)
_RATE_LIMIT_TYPES: Final = frozenset({"rate_limit_exceeded", "rate_limit_error", "429"})
#: How long to read past ``[DONE]`` for the body's end, so the connection is reused.
_DRAIN_SECONDS: Final = 0.1
#: How much of an error response's body is read (for its message).
_ERROR_BODY_LIMIT: Final = 1 << 20


class OpenAIProvider:
    """Streams chat completions from one OpenAI-compatible upstream."""

    def __init__(self, upstream: UpstreamConfig) -> None:
        self._secret = upstream.api_key.get_secret_value() if upstream.api_key else None
        # Builds the request template and the typed errors; it never sends.
        self._client = openai.AsyncOpenAI(
            base_url=upstream.base_url,
            # Local servers (vLLM, Ollama) need no key, but the SDK insists on one.
            api_key=self._secret or "none",
            max_retries=0,
            default_headers=dict(upstream.headers) or None,
        )
        self._connect_timeout = upstream.connect_timeout
        self._url, self._fields = request_template(self._client, "/chat/completions")
        # Every stream is sent on this one; the gateway owns first-token and idle
        # timeouts, so only connecting is timed here.
        self._http = HTTP1Client(self._url, self._fields, connect_timeout=upstream.connect_timeout)
        self._session: tuple[aiohttp.ClientSession, CIMultiDict[str]] | None = None
        self._tokenizer = UpstreamTokenizer(upstream.tokenize) if upstream.tokenize else None

    def _tokenize_session(self) -> tuple[aiohttp.ClientSession, CIMultiDict[str]]:
        """The session the tokenize endpoint is asked on (off the streaming path)."""
        if self._session is None:
            session = aiohttp.ClientSession(
                # An upstream's cookies are not the next caller's: keep none, send none.
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=None, sock_connect=self._connect_timeout, sock_read=None
                ),
            )
            self._session = session, request_headers(self._fields)  # both built once
        return self._session

    async def aclose(self) -> None:
        """Close the streaming connections, the tokenize session and the SDK's client."""
        await self._http.aclose()
        if self._session is not None:
            await self._session[0].close()
        await self._client.close()

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Yield the reply's events; see the module docstring for the details."""
        if self._tokenizer is None:
            return self._stream(request)
        return self._counted(request, self._tokenizer)

    async def _counted(
        self, request: ChatRequest, tokenizer: UpstreamTokenizer
    ) -> AsyncGenerator[StreamEvent, None]:
        """:meth:`_stream`, then a :class:`TokenCount` when it finished without usage."""
        texts: list[str] = []
        calls: dict[int, list[str]] = {}
        finished = reported = False
        async with aclosing(self._stream(request)) as events:
            async for event in events:
                if type(event) is TextDelta:
                    texts.append(event.text)
                elif type(event) is ToolCallDelta:
                    calls.setdefault(event.index, []).extend((event.name or "", event.arguments))
                elif type(event) is Finish:
                    finished = True
                elif type(event) is Usage:
                    reported = True
                yield event
        if finished and not reported:
            session, headers = self._tokenize_session()
            pieces = ["".join(texts), *("".join(calls[i]) for i in sorted(calls))]
            count = await tokenizer.count(session, headers, request.model, pieces)
            if count is not None:
                yield TokenCount(count)

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        # The body is parsed here, not in a generator of its own: one generator layer
        # less for every token.
        chunks = _Chunks()
        try:
            with _TranslateErrors(self._secret):
                response = await self._http.post(orjson.dumps(_body_of(request)))
                try:
                    if response.status >= 300:
                        body = await response.read_body(_ERROR_BODY_LIMIT)
                        raise status_error(
                            self._client, self._url, response.status, response.headers(), body
                        )
                    yield ACCEPTED
                    parser = SSEParser()
                    take, arrival = response.take, response.arrival
                    while True:
                        rest = chunks.rest
                        if rest is not None:  # the first event's read, after it
                            chunks.rest = None
                            events, error = chunks.events_of(rest)
                            del rest
                        else:
                            chunk = take()
                            if chunk is None:
                                # The future itself: no frame between this one and the socket.
                                await arrival()
                                continue
                            if not chunk:
                                break
                            events, error = chunks.events_of(parser.feed_data(chunk))
                            del chunk  # not held while the next read waits (see _Chunks)
                        for event in events:
                            yield event
                        if error is not None:
                            raise error
                        if chunks.done:
                            break
                    if not chunks.finished:
                        raise ProviderUnavailable("upstream stream ended without a finish")
                    usage = chunks.usage
                    if isinstance(usage, dict):
                        yield Usage(
                            prompt_tokens=_count(usage.get("prompt_tokens")),
                            completion_tokens=_count(usage.get("completion_tokens")),
                        )
                    if chunks.done:
                        await _drain(response)
                finally:
                    # Read to its end: the connection goes back to the pool; else closed.
                    response.release()
        except ProviderUnavailable:
            if not chunks.finished:
                raise


def _body_of(request: ChatRequest) -> dict[str, Any]:
    body: dict[str, Any] = {k: v for k, v in request.params.items() if k not in _NOT_FORWARDED}
    body["model"] = request.model
    body["messages"] = request.messages
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.seed is not None:
        body["seed"] = request.seed
    return body


#: Tool calls one reply may open; an index beyond it is a malformed chunk.
_MAX_TOOL_CALLS: Final = 128
#: A token count above this is not a count (and would overflow metrics).
_MAX_COUNT: Final = 1 << 40


class _Function(msgspec.Struct, gc=False):
    name: str | None = None
    arguments: str | None = None


_NO_FUNCTION: Final = _Function()


class _ToolCall(msgspec.Struct, gc=False):
    index: int | None = None
    id: str | None = None
    function: _Function | None = None


class _Delta(msgspec.Struct, gc=False):
    content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct, gc=False):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Chunk(msgspec.Struct, gc=False):
    """The fields of a ``chat.completion.chunk`` the gateway reads; the rest (ids,
    logprobs, fingerprints) is skipped by the decoder without being built."""

    choices: list[_Choice] | None = None
    usage: Any = None
    error: Any = msgspec.UNSET


#: Typed decoding: a third to a half of ``orjson.loads`` into dicts for a token's chunk
#: (``tests/benchmarks/chunk_parse.py``), and the types are checked on the way.
_decode_chunk = msgspec.json.Decoder(_Chunk).decode


class _Chunks:
    """What one stream's chunks told so far, parsed a read at a time.

    In a plain method, so nothing of a read (its bytes, the parsed chunk) is held by
    the stream's frame while the next read waits: about 1.5 KB per open stream.
    """

    __slots__ = ("done", "finished", "rest", "usage", "waiting")

    def __init__(self) -> None:
        #: ``[DONE]`` came.
        self.done = False
        #: A finish reason came (later ones are ignored).
        self.finished = False
        #: The last ``usage`` seen.
        self.usage: Any = None
        #: No event yet.
        self.waiting = True
        #: A read's events left for the next turn, after the stream's first event.
        self.rest: list[bytes] | None = None

    def events_of(self, datas: list[bytes]) -> tuple[list[StreamEvent], Exception | None]:
        """One read's SSE events (their data) as stream events, and the error that
        ends the stream (after the events before it).

        Until the first event, a data at a time: a fast upstream's first read may be
        its whole reply, and the first token goes out before the rest is decoded
        (kept in :attr:`rest`, for the reader's next turn)."""
        if self.waiting and len(datas) > 1:
            for index in range(len(datas)):
                first, failed = self.events_of(datas[index : index + 1])
                if first or failed is not None or self.done:
                    self.rest = datas[index + 1 :] or None
                    return first, failed
            return [], None
        events: list[StreamEvent] = []
        for data in datas:
            if data == b"[DONE]":
                self.done = True
                break
            try:
                chunk = _decode_chunk(data)
            except msgspec.ValidationError:
                if not _is_object(data):
                    continue  # not a chunk at all: ignored, as before typed decoding
                return events, _malformed()
            except msgspec.DecodeError:
                return events, ProviderUnavailable("upstream sent an invalid JSON chunk")
            choices = chunk.choices
            if not choices:
                if chunk.error is not msgspec.UNSET:
                    return events, _in_band_error(chunk.error)
            else:
                choice = choices[0]
                delta = choice.delta
                if delta is not None:
                    if delta.content:
                        events.append(TextDelta(delta.content))
                    if delta.tool_calls:
                        try:
                            events.extend(_tool_call_delta(call) for call in delta.tool_calls)
                        except ValueError:
                            return events, _malformed()
                if choice.finish_reason and not self.finished:
                    self.finished = True
                    events.append(Finish(_FINISH_REASONS.get(choice.finish_reason, "stop")))
            if chunk.usage:
                self.usage = chunk.usage
        if events:
            self.waiting = False
        return events, None


def _malformed() -> ProviderUnavailable:
    # A hostile or broken upstream: its reply fails, not the gateway.
    return ProviderUnavailable("upstream sent a malformed chunk")


def _is_object(data: bytes) -> bool:
    try:
        return isinstance(orjson.loads(data), dict)
    except orjson.JSONDecodeError:
        return True  # JSON msgspec rejects and orjson takes: not a sane chunk either


def _tool_call_delta(call: _ToolCall) -> ToolCallDelta:
    index = call.index or 0
    if not 0 <= index < _MAX_TOOL_CALLS:
        raise ValueError("tool call index")
    function = call.function if call.function is not None else _NO_FUNCTION
    return ToolCallDelta(
        index=index, id=call.id, name=function.name, arguments=function.arguments or ""
    )


def _count(value: Any) -> int:
    """A usage count as reported, or 0 when it is not a sane count."""
    if type(value) is int and 0 <= value < _MAX_COUNT:
        return value
    return 0


def _in_band_error(error: Any) -> ProviderError:
    if not isinstance(error, dict):
        return ProviderUnavailable(f"upstream error: {error}")
    message = f"upstream error: {error.get('message') or 'unknown'}"
    kinds = {str(error.get("type")), str(error.get("code"))}
    if kinds & _RATE_LIMIT_TYPES:
        return ProviderRateLimited(message, status=None)
    return ProviderUnavailable(message)


async def _drain(response: Connection) -> None:
    """Read the rest of the body briefly so the connection can be reused."""
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            while await response.read():
                pass
    except (TimeoutError, HTTP1Error):
        pass  # Best effort: closing the connection instead costs only a reconnect.


class _TranslateErrors(TranslateErrors):
    """SDK and transport exceptions, by type."""

    __slots__ = ()

    def translate(self, exc: BaseException) -> None:
        if isinstance(exc, openai.APIStatusError):
            raise _status_error(exc, self.redacted(_upstream_message(exc))) from None
        if isinstance(exc, ConnectTimeout):
            raise ProviderTimeout("upstream timed out") from exc
        if isinstance(exc, ConnectFailed):
            cause = exc.__cause__
            reason = type(cause).__name__ if cause is not None else str(exc)
            raise ProviderUnavailable(f"upstream connection failed: {reason}") from exc
        if isinstance(exc, ConnectionClosed):
            raise ProviderUnavailable("upstream connection closed") from exc
        if isinstance(exc, InvalidResponse):
            raise ProviderUnavailable(str(exc)) from exc


def _upstream_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        detail = body.get("message")
        if isinstance(body.get("error"), dict):  # some servers do not unwrap "error"
            detail = body["error"].get("message")
        if isinstance(detail, str) and detail:
            return f"upstream returned {exc.status_code}: {detail}"
    return f"upstream returned {exc.status_code}"


def _status_error(exc: openai.APIStatusError, message: str) -> ProviderError:
    status = exc.status_code
    if isinstance(exc, openai.RateLimitError):
        return ProviderRateLimited(
            message, status=status, retry_after=retry_after_seconds(exc.response.headers)
        )
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return ProviderAuthError(message, status=status)
    if isinstance(
        exc, openai.BadRequestError | openai.NotFoundError | openai.UnprocessableEntityError
    ):
        return ProviderBadRequest(message, status=status)
    return ProviderUnavailable(message, status=status)
