"""Anthropic's Messages dialect (``POST /v1/messages``): request translation and encoder.

Inbound: :class:`MessagesRequest` (``max_tokens`` required; content as a string or
``text`` / ``image`` / ``tool_use`` / ``tool_result`` blocks; ``system`` as a string
or blocks) is translated into the chat shape: ``tool_use`` blocks become assistant
``tool_calls``, ``tool_result`` blocks ``tool`` messages, ``stop_sequences`` ``stop``.
Outbound: :class:`MessagesEncoder` frames Anthropic's named events; errors, before
the stream and in it, take Anthropic's ``{"type": "error", "error": {...}}`` shape.

Intentional divergences: ``message_start`` reports ``input_tokens: 0`` (the count is
known only at the end) and ``message_delta`` carries the real one, which the SDK's
accumulator applies; ``anthropic-version`` and the key headers are accepted, not checked.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

import orjson
from pydantic import Field

from gateway.dialects.base import Completed, InboundRequest, UsageCounts
from gateway.dialects.validation import OpenModel, validate
from gateway.errors import BadRequest, GatewayError
from gateway.streaming import framer
from providers.events import FinishReason, ToolCallDelta

_STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}

#: GatewayError status -> Anthropic's error type.
_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status."""
    return _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(exc: GatewayError) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}}``."""
    return {"type": "error", "error": {"type": error_type(exc.status), "message": exc.message}}


class Tool(OpenModel):
    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any]


class ToolChoice(OpenModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Message(OpenModel):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class MessagesRequest(OpenModel):
    """``POST /v1/messages``."""

    model: str = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    messages: list[Message] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    metadata: dict[str, Any] | None = None
    #: tokenpipe's extensions: a seed (as in chat completions) and the fake's knobs.
    seed: int | None = None
    fake: dict[str, Any] | None = None

    @cached_property
    def inbound(self) -> InboundRequest:
        """The dialect-neutral request, in the chat shape."""
        messages: list[dict[str, Any]] = []
        if self.system:
            system = self.system if isinstance(self.system, str) else _text(self.system, "system")
            messages.append({"role": "system", "content": system})
        for i, message in enumerate(self.messages):
            messages.extend(_translate(message, i))
        params: dict[str, Any] = {}
        for name in ("temperature", "top_p", "top_k"):
            if (value := getattr(self, name)) is not None:
                params[name] = value
        if self.stop_sequences:
            params["stop"] = list(self.stop_sequences)
        if self.tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        **({"description": t.description} if t.description else {}),
                        "parameters": t.input_schema,
                    },
                }
                for t in self.tools
            ]
        if self.tool_choice is not None:
            params.update(_tool_choice(self.tool_choice))
        if self.metadata and isinstance(self.metadata.get("user_id"), str):
            params["user"] = self.metadata["user_id"]
        return InboundRequest(
            model=self.model,
            messages=messages,
            stream=self.stream,
            max_tokens=self.max_tokens,
            seed=self.seed,
            params=params,
            fake=self.fake,
        )

    def encoder(self, reply_id: str, created: int) -> MessagesEncoder:
        """The encoder of this request's stream."""
        return MessagesEncoder(id=reply_id, model=self.model)

    def pending(self, reply_id: str, created: int) -> dict[str, Any]:
        """A reply still running (the Messages API has no background mode; a resumed
        read of a live reply answers this)."""
        return {
            "id": reply_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "status": "in_progress",
        }

    def completion(self, reply: Completed) -> dict[str, Any]:
        """The whole ``message`` object."""
        content: list[dict[str, Any]] = []
        if reply.text or not reply.tool_calls:
            content.append({"type": "text", "text": reply.text})
        for call in reply.tool_calls:
            function = call["function"]
            content.append(
                {
                    "type": "tool_use",
                    "id": call["id"],
                    "name": function["name"],
                    "input": _arguments(function["arguments"]),
                }
            )
        stop_reason, stop_sequence = _stop(reply.finish, reply.stop_sequence)
        return {
            "id": reply.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {
                "input_tokens": reply.prompt_tokens,
                "output_tokens": reply.completion_tokens,
            },
        }


def _stop(reason: FinishReason, stop_sequence: str | None) -> tuple[str, str | None]:
    if reason == "stop" and stop_sequence is not None:
        return "stop_sequence", stop_sequence
    return _STOP_REASONS.get(reason, "end_turn"), None


def _arguments(arguments: str) -> Any:
    try:
        return orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {}


def _tool_choice(choice: ToolChoice) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if choice.type == "tool":
        if not choice.name:
            raise BadRequest("tool_choice of type 'tool' needs a 'name'.", param="tool_choice.name")
        params["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        params["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    if choice.disable_parallel_tool_use:
        params["parallel_tool_calls"] = False
    return params


def _text(blocks: list[dict[str, Any]], param: str) -> str:
    texts = []
    for j, block in enumerate(blocks):
        if block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise BadRequest("Only text blocks are allowed here.", param=f"{param}[{j}]")
        texts.append(block["text"])
    return "\n\n".join(texts)


def _translate(message: Message, i: int) -> list[dict[str, Any]]:
    """One Anthropic message -> chat messages (tool results first, as their own turns)."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(message.content):
        param = f"messages[{i}].content[{j}]"
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image" and message.role == "user":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block, param)}})
        elif kind == "tool_use" and message.role == "assistant":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
        elif kind == "tool_result" and message.role == "user":
            content = block.get("content")
            if isinstance(content, list):
                content = _text(content, f"{param}.content")
            out.append(
                {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": content or ""}
            )
        else:
            raise BadRequest(
                f"Unsupported content block {kind!r} for role {message.role!r}.", param=param
            )
    if message.role == "assistant":
        text = "".join(p["text"] for p in parts)
        assistant: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            assistant["tool_calls"] = calls
        out.append(assistant)
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _image_url(block: dict[str, Any], param: str) -> str:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise BadRequest("Unsupported image source.", param=f"{param}.source")


class MessagesEncoder:
    """The :class:`~gateway.dialects.base.Encoder` of the Messages API.

    Content blocks open lazily (a text block on the first token, a ``tool_use`` block
    on a tool call's first fragment) and are numbered in order; ``ping`` follows the
    first block's start, as Anthropic sends it. :meth:`finish` closes the open block;
    :meth:`end` sends ``message_delta`` (stop reason, usage) and ``message_stop``.
    """

    #: SSE ids count the events from 1 (the payload carries no number of its own).
    first_id = 1

    def __init__(self, *, id: str, model: str) -> None:
        self._id = id
        self._model = model
        self._blocks = 0
        self._open: Literal["text", "tool_use"] | None = None
        self._calls: dict[int, int] = {}  # tool call index -> block index
        self._delta_head = b""
        self._stop: tuple[str, str | None] = ("end_turn", None)

    @staticmethod
    def _event(kind: str, body: dict[str, Any]) -> bytes:
        return framer.named_prefix(kind) + orjson.dumps({"type": kind, **body}) + framer.END

    def start(self) -> bytes:
        """``message_start``."""
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return self._event("message_start", {"message": message})

    def _open_block(self, block: dict[str, Any]) -> bytes:
        frames = self._close()
        index = self._blocks
        self._blocks += 1
        self._open = block["type"]
        frames += self._event("content_block_start", {"index": index, "content_block": block})
        if index == 0:
            frames += self._event("ping", {})
        return frames

    def text(self, text: str) -> bytes:
        """One ``content_block_delta`` with a ``text_delta``: the per-token hot path."""
        opening = b""
        if self._open != "text":
            opening = self._open_block({"type": "text", "text": ""})
            self._delta_head = (
                framer.named_prefix("content_block_delta")
                + b'{"type":"content_block_delta","index":'
                + str(self._blocks - 1).encode()
                + b',"delta":{"type":"text_delta","text":'
            )
        return opening + self._delta_head + orjson.dumps(text) + b"}}" + framer.END

    def tool_call(self, delta: ToolCallDelta) -> bytes:
        """A ``tool_use`` block's start, or one ``input_json_delta``."""
        frames = b""
        index = self._calls.get(delta.index)
        if index is None:
            block = {
                "type": "tool_use",
                "id": delta.id or "",
                "name": delta.name or "",
                "input": {},
            }
            frames = self._open_block(block)
            index = self._calls[delta.index] = self._blocks - 1
        if delta.arguments:
            frames += self._event(
                "content_block_delta",
                {
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": delta.arguments},
                },
            )
        return frames

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return self._event("content_block_stop", {"index": self._blocks - 1})

    def finish(self, reason: FinishReason, stop_sequence: str | None = None) -> bytes:
        """Close the open block (a reply with no content still gets an empty text block)."""
        self._stop = _stop(reason, stop_sequence)
        frames = self._open_block({"type": "text", "text": ""}) if not self._blocks else b""
        return frames + self._close()

    def end(self, usage: UsageCounts) -> bytes:
        """``message_delta`` with the stop reason and usage, then ``message_stop``."""
        input_tokens, output_tokens = usage()
        stop_reason, stop_sequence = self._stop
        return self._event(
            "message_delta",
            {
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
            },
        ) + self._event("message_stop", {})

    def error(self, exc: GatewayError) -> bytes:
        """The in-band ``error`` event; no ``message_stop`` follows."""
        return self._event("error", {"error": error_body(exc)["error"]})


class AnthropicMessagesDialect:
    """``POST /v1/messages``: the :class:`~gateway.dialects.base.Dialect`."""

    name = "anthropic_messages"
    operation = "chat"
    id_prefix = "msg_"

    def parse(self, body: bytes) -> MessagesRequest:
        """Validate the body; translation errors are 400s here too."""
        parsed = validate(MessagesRequest, body)
        _ = parsed.inbound
        return parsed

    def error_body(self, exc: GatewayError) -> dict[str, Any]:
        """Anthropic's ``{"type": "error", "error": {...}}``."""
        return error_body(exc)


ANTHROPIC_MESSAGES = AnthropicMessagesDialect()
