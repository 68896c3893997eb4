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
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from itertools import islice
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from providers.base import ChatRequest
from providers.errors import (
    InvalidOptions,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from providers.events import Finish, FinishReason, StreamEvent, TextDelta, ToolCallDelta, Usage
from providers.fake import json_schema, tools
from providers.fake.reply import MAX_REPLY_TOKENS, ReplyComposer
from providers.fake.stops import apply_stops
from providers.fake.text import seeded_rng
from providers.support.tokenizer import Tokenizer

FaultKind = Literal["upstream_error", "rate_limited", "timeout", "auth"]

#: Yield to the event loop this often when there is no pace, for fairness.
_YIELD_EVERY = 32


class FakeOptions(BaseModel):
    """The fake provider's knobs (the request's ``fake`` field)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    #: Exact reply length in tokens (at most ``MAX_REPLY_TOKENS``); default: 150-400,
    #: chosen from the prompt and seed.
    reply_tokens: int | None = Field(None, ge=0, le=MAX_REPLY_TOKENS)
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
    #: ``Retry-After`` of an injected rate limit, in seconds (the header is clamped).
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
        raise InvalidOptions(
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

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._replies = ReplyComposer(tokenizer)

    def reply(self, request: ChatRequest, reply_tokens: int | None) -> tuple[TextDelta, ...]:
        """The full reply as token events, exactly as :meth:`stream` sends them."""
        return self._replies.reply(request, reply_tokens)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Yield the reply token by token at the configured pace."""
        opts = parse_options(request.options)
        tokens: Iterable[TextDelta | ToolCallDelta]
        stop_sequence: str | None = None
        finish: FinishReason
        special = await self._shaped(request, opts)
        if special is None:
            # Lazy: a token's text is composed when it is about to be sent.
            plan = await self._replies.plan(request, opts.reply_tokens, request.max_tokens)
            tokens, count, finish = islice(plan.tokens, plan.count), plan.count, plan.finish
        else:
            events, finish, stop_sequence = special
            if request.max_tokens is not None and request.max_tokens < len(events):
                events, finish, stop_sequence = events[: request.max_tokens], "length", None
            tokens, count = events, len(events)

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
        if opts.fail_after is not None and opts.fail_after >= count:
            raise _fault(opts.error, count, opts.retry_after)
        if opts.stall_after is not None and opts.stall_after >= count:
            await self._stall(opts.stall_seconds)
        yield Finish(finish, stop_sequence)
        yield Usage(
            prompt_tokens=await self._tokenizer.count_messages_off_loop(request.messages),
            completion_tokens=count,
        )

    async def _shaped(
        self, request: ChatRequest, opts: FakeOptions
    ) -> tuple[Sequence[TextDelta | ToolCallDelta], FinishReason, str | None] | None:
        """A reply the request shapes, before ``max_tokens``: a tool call, JSON, or text
        with ``stop`` applied; with its finish reason and the stop sequence that matched.
        ``None`` for a plain reply, which :meth:`stream` composes lazily."""
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
        if not params.get("stop"):
            return None
        # Stops need the whole text; bounded by MAX_REPLY_TOKENS and built off the loop.
        whole_reply = await asyncio.to_thread(self._replies.reply, request, opts.reply_tokens)
        replied, stop_sequence = apply_stops(whole_reply, params.get("stop"))
        return replied, "stop", stop_sequence

    @staticmethod
    async def _stall(seconds: float | None) -> None:
        if seconds is None:
            await asyncio.get_running_loop().create_future()  # until cancelled
        else:
            await asyncio.sleep(seconds)

    async def aclose(self) -> None:
        """Nothing to release but the cache."""
        self._replies.clear()
