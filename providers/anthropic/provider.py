"""The provider for Anthropic's Messages API, spoken directly over the providers' own
HTTP/1.1 client (:mod:`providers.support.http1`: a keep-alive pool per upstream).

The request is translated from the OpenAI chat shape: system and developer messages
are joined into ``system``; assistant ``tool_calls`` become ``tool_use`` blocks and
``tool`` messages user ``tool_result`` blocks; consecutive same-role messages are
merged (Anthropic requires alternation); function tools become ``{name, description,
input_schema}``. ``max_tokens`` is required upstream and defaults to 4096. Parameters
Anthropic has no equivalent for (``seed``, ``response_format``, penalties, ...) are
dropped.

The reply's events map as: ``text_delta`` → :class:`TextDelta`; a ``tool_use`` block's
start and its ``input_json_delta`` pieces → :class:`ToolCallDelta` (tool calls are
numbered from 0, apart from text blocks); ``message_stop`` → :class:`Finish` with the
mapped ``stop_reason``, then :class:`Usage` (input tokens include cache reads and
writes). A stream that ends before ``message_stop`` was cut.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import orjson
from multidict import CIMultiDict

from config.models import UpstreamConfig
from providers.anthropic.messages import request_body
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
    ToolCallDelta,
    Usage,
)
from providers.support.http1 import (
    ConnectFailed,
    Connection,
    ConnectionClosed,
    ConnectTimeout,
    HTTP1Client,
    HTTP1Error,
    InvalidResponse,
)
from providers.support.upstream_sse import SSEEvent, SSEParser, retry_after_seconds

DEFAULT_BASE_URL: Final = "https://api.anthropic.com"
API_VERSION: Final = "2023-06-01"
_STOP_REASONS: Final[Mapping[str, FinishReason]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_BAD_REQUEST_STATUSES: Final = frozenset({400, 404, 413, 422})
_DRAIN_SECONDS: Final = 0.1
#: How much of an error response's body is read (for its message).
_ERROR_BODY_LIMIT: Final = 1 << 20


class AnthropicProvider:
    """Streams messages from the Anthropic Messages API (or a compatible server)."""

    def __init__(self, upstream: UpstreamConfig) -> None:
        base = (upstream.base_url or DEFAULT_BASE_URL).rstrip("/")
        # Accept both the Anthropic SDK's convention (no /v1) and OpenAI's (with /v1).
        self._url = f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"
        self._secret = upstream.api_key.get_secret_value() if upstream.api_key else None
        headers = {
            "anthropic-version": API_VERSION,
            "content-type": "application/json",
            "accept": "text/event-stream",
        }
        if self._secret:
            headers["x-api-key"] = self._secret
        headers.update(upstream.headers)
        # The gateway owns first-token and idle timeouts: only connecting is timed here.
        self._http = HTTP1Client(self._url, headers, connect_timeout=upstream.connect_timeout)

    async def aclose(self) -> None:
        """Close the connections, idle or in use."""
        await self._http.aclose()

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Yield the reply's events; see the module docstring for the mapping."""
        body = orjson.dumps(request_body(request))
        response: Connection | None = None
        try:
            with _TranslateErrors(self._secret):
                response = await self._http.post(body)
                if response.status >= 300:  # a redirect too: it is not followed
                    raise await _status_error(response)
                yield ACCEPTED
                parser = SSEParser()
                state = _StreamState()
                take, arrival = response.take, response.arrival
                # The events are parsed here, not in a generator of its own (one layer
                # less for every token), each read in a function (nothing of it is held
                # while the next read waits), and the connection's future awaited here
                # (no coroutine between this frame and the socket).
                while True:
                    chunk = take()
                    if chunk is None:
                        await arrival()
                        continue
                    if not chunk:
                        break
                    events, error = _events_of(parser.feed(chunk), state)
                    del chunk
                    for event in events:
                        yield event
                    if error is not None:
                        raise error
                    if state.stopped:
                        await _drain(response)
                        return
                raise ProviderUnavailable("upstream stream ended without message_stop")
        finally:
            if response is not None:
                # Closes the connection instead of pooling it when the body was not read.
                response.release()


def _events_of(
    sses: list[SSEEvent], state: _StreamState
) -> tuple[list[StreamEvent], Exception | None]:
    """One read's Messages API events as provider events, and the error that ends
    the stream (after the events before it)."""
    events: list[StreamEvent] = []
    for sse in sses:
        try:
            obj = orjson.loads(sse.data)
        except orjson.JSONDecodeError as exc:  # translated as it is raised
            return events, exc
        if not isinstance(obj, dict):
            continue  # not an event: nothing to relay
        try:
            events.extend(state.events_of(obj, sse.event))
        except ProviderError as exc:
            return events, exc
        except (TypeError, ValueError, AttributeError, KeyError):
            # A hostile or broken upstream: its reply fails, never the gateway.
            return events, ProviderUnavailable("upstream sent a malformed event")
        if state.stopped:
            break
    return events, None


#: Tool calls one reply may open; a content block beyond it is a malformed event.
_MAX_TOOL_CALLS: Final = 128
#: A token count above this is not a count (and would overflow metrics).
_MAX_COUNT: Final = 1 << 40


def _count(value: Any) -> int:
    """A usage count as reported, or 0 when it is not a sane count."""
    if type(value) is int and 0 <= value < _MAX_COUNT:
        return value
    return 0


def _fields(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``obj[key]`` when it is an object, ``{}`` when absent or null; else TypeError."""
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(key)
    return value


def _text(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(what)
    return value


class _StreamState:
    """What one stream has told so far; :meth:`events_of` raises ``TypeError`` or
    ``ValueError`` on a malformed event."""

    __slots__ = (
        "input_tokens",
        "output_tokens",
        "stop_reason",
        "stop_sequence",
        "stopped",
        "tools",
    )

    def __init__(self) -> None:
        self.input_tokens = self.output_tokens = 0
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.stopped = False
        self.tools: dict[int, int] = {}  # content block index -> tool call number

    def events_of(self, obj: Mapping[str, Any], name: str | None) -> list[StreamEvent]:
        kind = obj.get("type") or name
        if kind == "content_block_delta":
            delta = _fields(obj, "delta")
            if delta.get("type") == "text_delta":
                if text := _text(delta.get("text"), "text"):
                    return [TextDelta(text)]
            elif delta.get("type") == "input_json_delta":
                number = self.tools.get(_block_index(obj))
                partial = _text(delta.get("partial_json"), "partial_json")
                if number is not None and partial:
                    return [ToolCallDelta(number, arguments=partial)]
        elif kind == "content_block_start":
            block = _fields(obj, "content_block")
            if block.get("type") == "tool_use":
                index = _block_index(obj)
                if index in self.tools or len(self.tools) >= _MAX_TOOL_CALLS:
                    raise ValueError("content block index")
                number = self.tools[index] = len(self.tools)
                given = block.get("input")
                arguments = orjson.dumps(given).decode() if given else ""
                call_id, name_ = _text(block.get("id"), "id"), _text(block.get("name"), "name")
                return [ToolCallDelta(number, call_id, name_, arguments)]
        elif kind == "message_start":
            self._usage(_fields(_fields(obj, "message"), "usage"))
        elif kind == "message_delta":
            delta = _fields(obj, "delta")
            self.stop_reason = _text(delta.get("stop_reason"), "stop_reason") or self.stop_reason
            stop_sequence = _text(delta.get("stop_sequence"), "stop_sequence")
            self.stop_sequence = stop_sequence or self.stop_sequence
            self._usage(_fields(obj, "usage"))
        elif kind == "message_stop":
            self.stopped = True
            reason = _STOP_REASONS.get(self.stop_reason or "", "stop")
            return [
                Finish(reason, self.stop_sequence),
                Usage(prompt_tokens=self.input_tokens, completion_tokens=self.output_tokens),
            ]
        elif kind == "error":
            raise _in_band_error(obj.get("error"))
        # ping, content_block_stop and unknown events carry nothing to relay.
        return []

    def _usage(self, usage: Mapping[str, Any]) -> None:
        if "input_tokens" in usage:
            self.input_tokens = sum(
                _count(usage.get(key))
                for key in (
                    "input_tokens",
                    "cache_creation_input_tokens",
                    "cache_read_input_tokens",
                )
            )
        self.output_tokens = _count(usage.get("output_tokens")) or self.output_tokens


def _block_index(obj: Mapping[str, Any]) -> int:
    index = obj.get("index")
    if type(index) is not int or not 0 <= index < _MAX_COUNT:
        raise ValueError("content block index")
    return index


async def _drain(response: Connection) -> None:
    """Read the rest of the body briefly so the connection can be pooled."""
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            while await response.read():
                pass
    except (TimeoutError, HTTP1Error):
        pass  # Best effort: releasing an unread response costs only a reconnect.


def _error_detail(body: Any) -> tuple[str | None, str | None]:
    """The ``(type, message)`` of an Anthropic error body, if it is one."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None
    kind, message = error.get("type"), error.get("message")
    return (
        kind if isinstance(kind, str) else None,
        message if isinstance(message, str) else None,
    )


def _in_band_error(error: Any) -> ProviderError:
    kind, message = _error_detail({"error": error})
    text = f"upstream error: {message or kind or 'unknown'}"
    if kind == "rate_limit_error":
        return ProviderRateLimited(text, status=None)
    return ProviderUnavailable(text)


async def _status_error(response: Connection) -> ProviderError:
    status = response.status
    raw = await response.read_body(_ERROR_BODY_LIMIT)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    _, detail = _error_detail(body)
    message = f"upstream returned {status}: {detail}" if detail else f"upstream returned {status}"
    if status == 429:
        return ProviderRateLimited(
            message, status=status, retry_after=retry_after_seconds(CIMultiDict(response.headers()))
        )
    if status in (401, 403):
        return ProviderAuthError(message, status=status)
    if status in _BAD_REQUEST_STATUSES:
        return ProviderBadRequest(message, status=status)
    return ProviderUnavailable(message, status=status)


class _TranslateErrors(TranslateErrors):
    """Transport and parsing exceptions, by type."""

    __slots__ = ()

    def translate(self, exc: BaseException) -> None:
        if isinstance(exc, ConnectTimeout):
            raise ProviderTimeout("upstream timed out") from exc
        if isinstance(exc, ConnectFailed):
            raise ProviderUnavailable("cannot connect to upstream") from exc
        if isinstance(exc, ConnectionClosed):
            raise ProviderUnavailable("upstream connection closed") from exc
        if isinstance(exc, InvalidResponse):
            raise ProviderUnavailable(str(exc)) from exc
        if isinstance(exc, orjson.JSONDecodeError):
            raise ProviderUnavailable("upstream sent an invalid JSON event") from exc
