"""The provider for Anthropic's Messages API, spoken directly over one aiohttp session.

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
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any, Final

import aiohttp
import orjson

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
from providers.events import Finish, FinishReason, StreamEvent, TextDelta, ToolCallDelta, Usage
from providers.support.upstream_sse import SSEParser, retry_after_seconds

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
        self._headers = headers
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=upstream.connect_timeout, sock_read=None
        )
        self._session: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        """Close the HTTP session and its connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Yield the reply's events; see the module docstring for the mapping."""
        body = orjson.dumps(request_body(request))
        if self._session is None:
            # Created here, not in __init__, so it binds to the running loop.
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        response: aiohttp.ClientResponse | None = None
        try:
            with _TranslateErrors(self._secret):
                response = await self._session.post(self._url, data=body, headers=self._headers)
                if response.status >= 400:
                    raise await _status_error(response)
                async with aclosing(_events(response)) as events:
                    async for event in events:
                        yield event
        finally:
            if response is not None:
                # Closes the connection instead of pooling it when the body was not read.
                response.release()


async def _events(response: aiohttp.ClientResponse) -> AsyncGenerator[StreamEvent, None]:
    """Parse a Messages API event stream into provider events."""
    parser = SSEParser()
    loads = orjson.loads
    input_tokens = output_tokens = 0
    stop_reason: str | None = None
    stop_sequence: str | None = None
    tool_index: dict[Any, int] = {}  # content block index → tool call number
    async for chunk in response.content.iter_any():
        for sse in parser.feed(chunk):
            obj = loads(sse.data)
            kind = obj.get("type") or sse.event
            if kind == "content_block_delta":
                delta = obj.get("delta") or {}
                if delta.get("type") == "text_delta":
                    if text := delta.get("text"):
                        yield TextDelta(text)
                elif delta.get("type") == "input_json_delta":
                    number = tool_index.get(obj.get("index"))
                    if number is not None and (partial := delta.get("partial_json")):
                        yield ToolCallDelta(number, arguments=partial)
            elif kind == "content_block_start":
                block = obj.get("content_block") or {}
                if block.get("type") == "tool_use":
                    number = tool_index[obj.get("index")] = len(tool_index)
                    given = block.get("input")
                    arguments = orjson.dumps(given).decode() if given else ""
                    yield ToolCallDelta(number, block.get("id"), block.get("name"), arguments)
            elif kind == "message_start":
                usage = (obj.get("message") or {}).get("usage") or {}
                input_tokens = _input_tokens(usage, input_tokens)
                output_tokens = int(usage.get("output_tokens") or 0)
            elif kind == "message_delta":
                stop_reason = (obj.get("delta") or {}).get("stop_reason") or stop_reason
                stop_sequence = (obj.get("delta") or {}).get("stop_sequence") or stop_sequence
                usage = obj.get("usage") or {}
                input_tokens = _input_tokens(usage, input_tokens)
                output_tokens = int(usage.get("output_tokens") or output_tokens)
            elif kind == "message_stop":
                yield Finish(_STOP_REASONS.get(stop_reason or "", "stop"), stop_sequence)
                yield Usage(prompt_tokens=input_tokens, completion_tokens=output_tokens)
                await _drain(response)
                return
            elif kind == "error":
                raise _in_band_error(obj.get("error"))
            # ping, content_block_stop and unknown events carry nothing to relay.
    raise ProviderUnavailable("upstream stream ended without message_stop")


def _input_tokens(usage: Mapping[str, Any], current: int) -> int:
    if "input_tokens" not in usage:
        return current
    return sum(
        int(usage.get(key) or 0)
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read the rest of the body briefly so the connection can be pooled."""
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            async for _ in response.content.iter_any():
                pass
    except (TimeoutError, aiohttp.ClientError):
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


async def _status_error(response: aiohttp.ClientResponse) -> ProviderError:
    status = response.status
    raw = await response.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    _, detail = _error_detail(body)
    message = f"upstream returned {status}: {detail}" if detail else f"upstream returned {status}"
    if status == 429:
        return ProviderRateLimited(
            message, status=status, retry_after=retry_after_seconds(response.headers)
        )
    if status in (401, 403):
        return ProviderAuthError(message, status=status)
    if status in _BAD_REQUEST_STATUSES:
        return ProviderBadRequest(message, status=status)
    return ProviderUnavailable(message, status=status)


class _TranslateErrors(TranslateErrors):
    """aiohttp and parsing exceptions, by type."""

    __slots__ = ()

    def translate(self, exc: BaseException) -> None:
        if isinstance(exc, aiohttp.ServerTimeoutError):
            raise ProviderTimeout("upstream timed out") from exc
        if isinstance(exc, aiohttp.ClientConnectorError):
            raise ProviderUnavailable("cannot connect to upstream") from exc
        if isinstance(exc, aiohttp.ClientError):
            raise ProviderUnavailable(f"upstream connection failed: {type(exc).__name__}") from exc
        if isinstance(exc, orjson.JSONDecodeError):
            raise ProviderUnavailable("upstream sent an invalid JSON event") from exc
