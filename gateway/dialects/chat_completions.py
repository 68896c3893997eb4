"""The OpenAI chat-completions dialect: its wire schema, inbound and outbound.

Inbound: :class:`ChatCompletionRequest` accepts what OpenAI clients send (content
as a string or parts, every role, tools, unknown extra fields) and rejects what is
wrong with a ``param`` naming the field; the common request (text messages, the
usual parameters) is taken without it, as it would take it (:func:`plain_request`,
on every request's first-token path). Outbound: :class:`ChunkEncoder` frames
``chat.completion.chunk`` events, :func:`completion_body` the non-streaming answer.
:data:`CHAT_COMPLETIONS` is the dialect object the HTTP layer uses.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, model_validator

from gateway.dialects.base import Completed, InboundRequest, UsageCounts
from gateway.dialects.large_body import LARGE_BODY_BYTES, validate_large
from gateway.dialects.validation import validate
from gateway.errors import GatewayError
from gateway.streaming import framer
from providers.events import FinishReason, ToolCallDelta

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class _Open(BaseModel):
    """Strict JSON types, unknown fields kept (clients send many we pass through)."""

    model_config = ConfigDict(extra="allow", strict=True)


class ContentPart(_Open):
    type: str = Field(min_length=1)
    text: str | None = None


class FunctionCall(_Open):
    name: str | None = None
    arguments: str | None = None


class ToolCall(_Open):
    id: str | None = None
    type: str = "function"
    function: FunctionCall


class Message(_Open):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_required(self) -> Message:
        if self.content is None and self.role not in ("assistant", "function"):
            raise ValueError(f"content is required for role '{self.role}'")
        return self


class StreamOptions(_Open):
    include_usage: bool = False


class FunctionDef(_Open):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Open):
    type: str = "function"
    function: FunctionDef


class _Shaped(Protocol):
    """What :class:`_Answers` reads of a parsed request."""

    @property
    def model(self) -> str: ...

    @property
    def include_usage(self) -> bool: ...


class _Answers:
    """A parsed request's answers (``DialectRequest``'s encoder, pending and
    completion), for the model and for the plain request alike."""

    __slots__ = ()

    def encoder(self: _Shaped, reply_id: str, created: int) -> ChunkEncoder:
        """The encoder of this request's stream."""
        return ChunkEncoder(
            id=reply_id, created=created, model=self.model, include_usage=self.include_usage
        )

    def pending(self: _Shaped, reply_id: str, created: int) -> dict[str, Any]:
        """A background reply still running."""
        return {
            "id": reply_id,
            "object": "chat.completion",
            "created": created,
            "model": self.model,
            "status": "in_progress",
        }

    def completion(self, reply: Completed) -> dict[str, Any]:
        """The ``chat.completion`` body."""
        return completion_body(
            id=reply.id,
            created=reply.created,
            model=reply.model,
            content=reply.text,
            tool_calls=reply.tool_calls,
            finish_reason=reply.finish,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
        )


class ChatCompletionRequest(_Answers, _Open):
    """``POST /v1/chat/completions``."""

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=1)
    seed: int | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stop: str | list[str] | None = None
    tools: list[Tool] | None = None
    #: tokenpipe's extension: the fake provider's per-request knobs.
    fake: dict[str, Any] | None = None
    #: Run the reply to its end whether or not a client stays connected.
    background: bool = False
    #: The messages already dumped to dicts, when a large body was validated in
    #: batches (``messages`` then holds only the first one): see ``large_body``.
    _dumped_messages: list[dict[str, Any]] | None = PrivateAttr(None)

    @property
    def token_limit(self) -> int | None:
        """``max_completion_tokens`` (the newer name) or ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def passthrough_params(self) -> dict[str, Any]:
        """Sampling, tool and unknown parameters, for the provider to pass on."""
        if not self.__pydantic_extra__ and self.model_fields_set <= _GATEWAY_FIELDS:
            return {}  # none sent: what the dump would give, without its cost (~4 us)
        return self.model_dump(
            exclude=_GATEWAY_FIELDS, exclude_none=True, exclude_unset=True, by_alias=True
        )

    @property
    def inbound(self) -> InboundRequest:
        """The dialect-neutral request."""
        # The private attribute through its dict: pydantic's attribute lookup for it
        # costs more than the rest of this (~3 us, on every request's first-token path).
        private = self.__pydantic_private__
        dumped = private.get("_dumped_messages") if private else None
        return InboundRequest(
            model=self.model,
            messages=dumped
            if dumped is not None
            else [m.model_dump(exclude_none=True) for m in self.messages],
            stream=self.stream,
            max_tokens=self.token_limit,
            seed=self.seed,
            params=self.passthrough_params(),
            fake=self.fake,
            background=self.background,
        )


_GATEWAY_FIELDS = {
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "seed",
    "fake",
    "background",
}


_MESSAGES = TypeAdapter(list[Message])


def parse_request(body: bytes) -> ChatCompletionRequest:
    """Validate a request body, raising :class:`BadRequest` naming the first bad field.

    A large body is validated in bounded steps (:mod:`gateway.dialects.large_body`).
    """
    if len(body) > LARGE_BODY_BYTES:
        found = validate_large(ChatCompletionRequest, _MESSAGES, body, "messages")
        if found is not None:
            request, dumped = found
            request._dumped_messages = dumped
            return request
    request = validate(ChatCompletionRequest, body)
    texts = _text_messages(body)
    if texts is not None:
        request.__pydantic_private__["_dumped_messages"] = texts  # type: ignore[index]
    return request


def _text_messages(body: bytes) -> list[dict[str, Any]] | None:
    """The body's messages as sent, when each holds only strings (validated: the
    dump would give the same dicts): 0.5 us for the body, against 2.3 us a
    message for the dump, on every request's first-token path."""
    try:
        messages: list[dict[str, Any]] = orjson.loads(body)["messages"]
    except orjson.JSONDecodeError:  # pydantic's JSON is wider (NaN, Infinity): dumped
        return None
    for message in messages:
        for value in message.values():
            if type(value) is not str:
                return None
    return messages


#: A message's fields that are not strings (a message taken as plain holds only strings).
_MESSAGE_NON_STRINGS = frozenset({"tool_calls"})
_ROLES = frozenset(get_args(Role))
#: The sampling parameters a plain request may carry, in declaration order (the
#: order ``passthrough_params`` dumps them in), with their bounds.
_SAMPLING = {
    "temperature": (0, 2),
    "top_p": (0, 1),
    "presence_penalty": (-2, 2),
    "frequency_penalty": (-2, 2),
}
_PLAIN_TOKEN_LIMITS = ("max_tokens", "max_completion_tokens")


class PlainChatRequest(_Answers):
    """A request in the common shape (text messages, the usual parameters), taken
    without the model: what :class:`ChatCompletionRequest` would make of it, for under
    half the cost on every request's first-token path. See :func:`plain_request`.
    """

    __slots__ = ("_inbound", "_usage", "model")

    def __init__(self, inbound: InboundRequest, include_usage: bool) -> None:
        self._inbound = inbound
        self._usage = include_usage
        self.model = inbound.model

    @property
    def inbound(self) -> InboundRequest:
        return self._inbound

    @property
    def include_usage(self) -> bool:
        return self._usage


def plain_request(body: bytes) -> PlainChatRequest | None:
    """The body as a :class:`PlainChatRequest` when it is plainly valid, else None
    (the model validates it, and words any error).

    Plain: a JSON object whose messages are objects of strings (a known role, its
    content), and whose other fields are the gateway's own of their exact JSON type
    (``stream``, ``stream_options``, the token limits, ``seed``, ``n``: 1,
    ``background``, ``fake``), sampling numbers within their bounds, ``stop`` as
    strings, or fields the model does not know (passed on, as it would). Anything
    else (tools, content parts, a bound crossed, a wrong type) is the model's.
    ``tests/gateway/dialects/test_chat_completions.py`` checks that both agree.
    """
    if len(body) > LARGE_BODY_BYTES:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict:
        return None
    model = data.get("model")
    messages = data.get("messages")
    if type(model) is not str or not model or type(messages) is not list or not messages:
        return None
    for message in messages:
        if type(message) is not dict or "content" not in message:
            return None
        for value in message.values():
            if type(value) is not str:
                return None
        if message.get("role") not in _ROLES or not _MESSAGE_NON_STRINGS.isdisjoint(message):
            return None
    stream = background = include_usage = False
    limits: dict[str, int] = {}
    seed: int | None = None
    fake: dict[str, Any] | None = None
    sampling: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        if key == "model" or key == "messages":
            continue
        if key == "stream" or key == "background":
            if type(value) is not bool:
                return None
            if key == "stream":
                stream = value
            else:
                background = value
        elif key == "stream_options":
            if value is None:
                continue
            if type(value) is not dict or not value.keys() <= {"include_usage"}:
                return None
            usage = value.get("include_usage", False)
            if type(usage) is not bool:
                return None
            include_usage = usage
        elif key in _PLAIN_TOKEN_LIMITS:
            if value is None:
                continue
            if type(value) is not int or value < 1:
                return None
            limits[key] = value
        elif key == "seed":
            if value is not None and type(value) is not int:
                return None
            seed = value
        elif key == "n":
            if value is not None and (type(value) is not int or value != 1):
                return None
        elif key == "fake":
            if value is not None and type(value) is not dict:
                return None
            fake = value
        elif key in _SAMPLING:
            if value is None:
                continue
            low, high = _SAMPLING[key]
            if type(value) is not float and type(value) is not int:
                return None
            if not low <= value <= high:
                return None
            sampling[key] = float(value)
        elif key == "stop":
            if value is None:
                continue
            if type(value) is list:
                if any(type(item) is not str for item in value):
                    return None
            elif type(value) is not str:
                return None
            sampling[key] = value
        elif key in ChatCompletionRequest.model_fields:
            return None  # tools: the model's
        elif value is not None:
            extra[key] = value
    params = {k: sampling[k] for k in (*_SAMPLING, "stop") if k in sampling}
    params.update(extra)
    inbound = InboundRequest(
        model=model,
        messages=messages,
        stream=stream,
        max_tokens=limits.get("max_completion_tokens") or limits.get("max_tokens"),
        seed=seed,
        params=params,
        fake=fake,
        background=background,
    )
    return PlainChatRequest(inbound, include_usage)


_HEAD_END = b',"system_fingerprint":null,"choices":'
_CONTENT_OPEN = b'[{"index":0,"delta":{"content":'
#: A chunk's end after its delta, without and with ``stream_options.include_usage``.
_TAILS = {
    False: b',"logprobs":null,"finish_reason":null}]}',
    True: b',"logprobs":null,"finish_reason":null}],"usage":null}',
}
#: A token frame's end after its text.
_EVENT_TAILS = {usage: b"}" + tail + framer.END for usage, tail in _TAILS.items()}


class ChunkEncoder:
    """The :class:`~gateway.dialects.base.Encoder` of chat completions.

    Every chunk of a stream shares id, created and model, so their JSON is built
    from byte templates made once per stream: the per-token cost is one
    ``orjson.dumps`` of the token text and two concatenations.
    """

    # One byte string per stream (the frame of a token up to its text); everything
    # else is derived from it, or one of two constants: an open stream holds ~200
    # bytes of templates, not ~800.
    __slots__ = ("_event_head", "_event_tail", "_include_usage", "_tail")

    #: SSE ids count the chunks from 1 (the payload carries no number of its own).
    first_id = 1

    def __init__(self, *, id: str, created: int, model: str, include_usage: bool) -> None:
        # orjson escapes CR and LF, so a token's chunk is always one ``data:`` line and
        # its whole frame can be built from the framer's prefix in one go
        # (tests/gateway/dialects/test_chat_completions.py checks it equals
        # ``framer.data_event`` of the chunk).
        self._event_head = (
            framer.data_prefix()
            + b'{"id":'
            + orjson.dumps(id)
            + b',"object":"chat.completion.chunk","created":'
            + str(created).encode()
            + b',"model":'
            + orjson.dumps(model)
            + _HEAD_END
            + _CONTENT_OPEN
        )
        self._include_usage = include_usage
        self._tail = _TAILS[include_usage]
        self._event_tail = _EVENT_TAILS[include_usage]

    @property
    def _head(self) -> bytes:
        """The chunk's JSON up to its ``choices`` value (not per token)."""
        return self._event_head[len(framer.data_prefix()) : -len(_CONTENT_OPEN)]

    @property
    def _content_head(self) -> bytes:
        return self._event_head[len(framer.data_prefix()) :]

    def start(self) -> bytes:
        """The first chunk: the assistant role and empty content."""
        return framer.data_event(
            self._content_head[: -len(b'{"content":')]
            + b'{"role":"assistant","content":""}'
            + self._tail
        )

    def text(self, text: str) -> bytes:
        """The frame of one token of text: the per-token hot path."""
        return self._event_head + orjson.dumps(text) + self._event_tail

    def tool_call(self, delta: ToolCallDelta) -> bytes:
        """The frame of one tool-call fragment."""
        call: dict[str, Any] = {"index": delta.index}
        if delta.id is not None:
            call["id"] = delta.id
            call["type"] = "function"
        function: dict[str, str] = {"arguments": delta.arguments}
        if delta.name is not None:
            function["name"] = delta.name
        call["function"] = function
        delta_json = orjson.dumps({"tool_calls": [call]})
        return framer.data_event(
            self._content_head[: -len(b'{"content":')] + delta_json + self._tail
        )

    def finish(self, reason: FinishReason, stop_sequence: str | None = None) -> bytes:
        """The chunk with an empty delta and the finish reason (OpenAI names no stop)."""
        choice = (
            b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":"' + reason.encode() + b'"}]'
        )
        return framer.data_event(
            self._head + choice + (b',"usage":null}' if self._include_usage else b"}")
        )

    def end(self, usage: UsageCounts) -> bytes:
        """The usage chunk (no choices) when the client asked for it, then ``[DONE]``."""
        if not self._include_usage:
            return framer.DONE
        prompt_tokens, completion_tokens = usage()
        chunk = (
            self._head
            + b"[]"
            + b',"usage":'
            + orjson.dumps(usage_body(prompt_tokens, completion_tokens))
            + b"}"
        )
        return framer.data_event(chunk) + framer.DONE

    def error(self, exc: GatewayError) -> bytes:
        """``data: {"error": ...}``, with no ``[DONE]`` after it."""
        return framer.data_event(orjson.dumps(exc.body()))


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    *,
    id: str,
    created: int,
    model: str,
    content: str,
    tool_calls: list[dict[str, Any]],
    finish_reason: FinishReason,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """A non-streaming ``chat.completion``."""
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if not tool_calls:
        message["content"] = content
    else:
        message["tool_calls"] = tool_calls
    message["refusal"] = None
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": usage_body(prompt_tokens, completion_tokens),
    }


def model_list(names: list[str], created: int) -> dict[str, Any]:
    """``GET /v1/models``."""
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "tokenpipe"}
            for name in names
        ],
    }


class ChatCompletionsDialect:
    """``POST /v1/chat/completions``: the :class:`~gateway.dialects.base.Dialect`."""

    name = "chat_completions"
    operation = "chat"
    id_prefix = "chatcmpl-"

    def parse(self, body: bytes) -> ChatCompletionRequest | PlainChatRequest:
        """See :func:`parse_request`; the common request takes :func:`plain_request`."""
        return plain_request(body) or parse_request(body)

    def error_body(self, exc: GatewayError) -> dict[str, Any]:
        """OpenAI's ``{"error": {...}}``."""
        return exc.body()


CHAT_COMPLETIONS = ChatCompletionsDialect()
