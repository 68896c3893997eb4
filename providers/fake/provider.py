"""The fake provider: a realistic, deterministic token generator with no model.

It is the embedded default, so the gateway runs with no API key and no network.
Text comes from :mod:`providers.fake.text`, split into real tiktoken tokens, one
event per token. Its knobs (:class:`FakeOptions`) come from the model's configured
``options`` and, per request, from the request's ``fake`` extension field: reply
length, pace, time to first token, and fault injection.
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from providers.base import ChatRequest
from providers.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from providers.events import Finish, FinishReason, StreamEvent, TextDelta, ToolCallDelta, Usage
from providers.fake import json_schema, tools
from providers.fake.stops import apply_stops
from providers.fake.text import compose_reply, seeded_rng
from providers.support.tokenizer import Tokenizer

FaultKind = Literal["upstream_error", "rate_limited", "timeout", "auth"]

#: Yield to the event loop this often when there is no pace, for fairness.
_YIELD_EVERY = 32


class FakeOptions(BaseModel):
    """The fake provider's knobs (the request's ``fake`` field)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    #: Exact reply length in tokens; default: 150-400, chosen from the prompt and seed.
    reply_tokens: int | None = Field(None, ge=0, le=1_000_000)
    #: Pace after the first token; 0 means as fast as possible.
    tokens_per_second: float = Field(0.0, ge=0)
    #: Delay before the first token, in milliseconds.
    ttft_ms: float = Field(0.0, ge=0, le=600_000)
    #: Relative random variation of each delay, 0 to 1.
    jitter: float = Field(0.0, ge=0, le=1)
    #: Raise ``error`` after this many tokens (0: before the first one).
    fail_after: int | None = Field(None, ge=0)
    #: Stop sending after this many tokens, for ``stall_seconds`` (default: forever).
    stall_after: int | None = Field(None, ge=0)
    stall_seconds: float | None = Field(None, gt=0)
    #: What ``fail_after`` raises.
    error: FaultKind = "upstream_error"
    #: ``Retry-After`` of an injected rate limit, in seconds.
    retry_after: float = Field(1.0, ge=0)
    #: Call one of the request's tools even when ``tool_choice`` does not require it.
    tool_call: bool = False


def parse_options(options: Mapping[str, Any]) -> FakeOptions:
    """Validate merged options; a bad knob is the client's error, naming the field."""
    try:
        return FakeOptions.model_validate(dict(options))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ProviderBadRequest(
            f"Invalid value for 'fake.{field}': {first['msg']}", param=f"fake.{field}"
        ) from None


def _fault(kind: FaultKind, after: int, retry_after: float) -> ProviderError:
    message = f"fake provider: injected {kind} after {after} tokens"
    if kind == "rate_limited":
        return ProviderRateLimited(message, retry_after=retry_after)
    if kind == "timeout":
        return ProviderTimeout(message)
    if kind == "auth":
        return ProviderAuthError(message, status=401)
    return ProviderUnavailable(message, status=500)


def _conversation_text(messages: list[dict[str, Any]]) -> tuple[str, str]:
    """(whole conversation, last user text) as plain strings."""

    def text_of(content: Any) -> str:
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(
                p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
        return ""

    whole = "\n".join(f"{m.get('role')}: {text_of(m.get('content'))}" for m in messages)
    last_user = next(
        (text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    return whole, last_user


class FakeProvider:
    """Streams a deterministic reply; satisfies :class:`providers.base.Provider`."""

    def __init__(self, tokenizer: Tokenizer, *, cache_size: int = 256) -> None:
        self._tokenizer = tokenizer
        self._cache: OrderedDict[tuple[str, int | None, int | None], tuple[TextDelta, ...]] = (
            OrderedDict()
        )
        self._cache_size = cache_size

    def reply(self, request: ChatRequest, reply_tokens: int | None) -> tuple[TextDelta, ...]:
        """The full reply as token events (cached: the same request gives the same)."""
        whole, last_user = _conversation_text(request.messages)
        key = (whole, request.seed, reply_tokens)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        rng = seeded_rng(whole, request.seed)
        if reply_tokens is None:
            # A whole reply (never cut mid-sentence) of roughly 150-400 tokens.
            text = compose_reply(last_user, rng, min_chars=rng.randint(150, 400) * 4)
            pieces = self._tokenizer.pieces(text)
        else:
            min_chars = reply_tokens * 5
            while True:
                pieces = self._tokenizer.pieces(compose_reply(last_user, rng, min_chars))
                if len(pieces) >= reply_tokens:
                    break
                min_chars *= 2
            pieces = pieces[:reply_tokens]
        events = tuple(TextDelta(p) for p in pieces)
        self._cache[key] = events
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return events

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Yield the reply token by token at the configured pace."""
        opts = parse_options(request.options)
        tokens, finish, stop_sequence = self._events(request, opts)
        if request.max_tokens is not None and request.max_tokens < len(tokens):
            tokens, finish, stop_sequence = tokens[: request.max_tokens], "length", None

        loop = asyncio.get_running_loop()
        # Timing need not repeat, only the text: the shared generator, not a 2.5 KB
        # random.Random per stream.
        uniform = random.random

        def jittered(seconds: float) -> float:
            return seconds * (1.0 + opts.jitter * (2.0 * uniform() - 1.0))

        if opts.ttft_ms > 0:
            await asyncio.sleep(jittered(opts.ttft_ms / 1000.0))
        interval = 1.0 / opts.tokens_per_second if opts.tokens_per_second > 0 else 0.0
        due = loop.time()
        for sent, token in enumerate(tokens):
            if sent == opts.fail_after:
                raise _fault(opts.error, sent, opts.retry_after)
            if sent == opts.stall_after:
                await self._stall(opts.stall_seconds)
                due = loop.time()
            if interval and sent:
                # An absolute schedule: the pace does not drift with scheduling delays.
                due += jittered(interval)
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif sent % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)
            yield token
        if opts.fail_after is not None and opts.fail_after >= len(tokens):
            raise _fault(opts.error, len(tokens), opts.retry_after)
        if opts.stall_after is not None and opts.stall_after >= len(tokens):
            await self._stall(opts.stall_seconds)
        yield Finish(finish, stop_sequence)
        yield Usage(
            prompt_tokens=self._tokenizer.count_messages(request.messages),
            completion_tokens=len(tokens),
        )

    def _events(
        self, request: ChatRequest, opts: FakeOptions
    ) -> tuple[Sequence[TextDelta | ToolCallDelta], FinishReason, str | None]:
        """The reply's events before ``max_tokens``: a tool call, JSON or text (with
        ``stop`` applied); the finish reason; the stop sequence that matched."""
        params = request.params
        if params.get("tools") or params.get("response_format"):
            whole, last_user = _conversation_text(request.messages)
            shape = orjson.dumps(
                [params.get("tools"), params.get("response_format")], default=str
            ).decode()
            rng = seeded_rng(whole + shape, request.seed)
            function = tools.chosen_function(
                params, request.messages, force=opts.tool_call, rng=rng
            )
            if function is not None:
                return tools.call_events(function, rng, self._tokenizer), "tool_calls", None
            text = json_schema.reply_text(params.get("response_format"), rng, last_user)
            if text is not None:
                pieces = tuple(TextDelta(p) for p in self._tokenizer.pieces(text))
                cut, matched = apply_stops(pieces, params.get("stop"))
                return cut, "stop", matched
        replied, stop_sequence = apply_stops(
            self.reply(request, opts.reply_tokens), params.get("stop")
        )
        return replied, "stop", stop_sequence

    @staticmethod
    async def _stall(seconds: float | None) -> None:
        if seconds is None:
            await asyncio.get_running_loop().create_future()  # until cancelled
        else:
            await asyncio.sleep(seconds)

    async def aclose(self) -> None:
        """Nothing to release."""
        self._cache.clear()
