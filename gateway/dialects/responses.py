"""The OpenAI Responses dialect (``POST /v1/responses``): request translation and encoder.

Inbound: :class:`ResponsesRequest` accepts ``input`` as a string or a list of items
(messages, ``function_call`` and ``function_call_output`` for tool round trips),
``instructions``, function tools in the Responses shape and ``text.format``, and
translates them into the chat shape of :class:`~gateway.dialects.base.InboundRequest`
(the same prompt gives the same messages as chat completions, so the same reply).
Outbound: :class:`ResponsesEncoder` frames named events (``event: <type>``) with a
monotonically increasing ``sequence_number`` from 0, in OpenAI's order, and each
event's SSE ``id`` is its ``sequence_number`` (so ``starting_after`` and
``Last-Event-ID`` name the same event); the non-streaming answer is the same
``response`` object that ``response.completed`` carries.

Intentional divergences: ``store`` is accepted and echoed, but a reply is kept only
in the reply log, ``resume_ttl_seconds`` after its end; items and tools other than
messages and functions are rejected with a 400. A cancelled reply's stream ends
with ``response.failed`` whose response has ``"status": "cancelled"`` (and no
``error``): OpenAI's stream events have no cancellation event, and a stream that
just stopped would look cut by the network.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

import orjson
from pydantic import Field

from gateway.dialects.base import Completed, InboundRequest, UsageCounts
from gateway.dialects.validation import OpenModel, validate
from gateway.errors import BadRequest, GatewayError, ReplyCancelled, UpstreamRateLimited
from gateway.streaming import framer
from providers.events import FinishReason, ToolCallDelta

_INCOMPLETE_REASONS: dict[str, str] = {
    "length": "max_output_tokens",
    "content_filter": "content_filter",
}


class FunctionTool(OpenModel):
    type: Literal["function"]
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(OpenModel):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(OpenModel):
    format: TextFormat | None = None


class ResponsesRequest(OpenModel):
    """``POST /v1/responses``."""

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    stream: bool = False
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    tools: list[FunctionTool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    background: bool | None = None
    text: TextConfig | None = None
    user: str | None = None
    #: tokenpipe's extensions: a seed (as in chat completions) and the fake's knobs.
    seed: int | None = None
    fake: dict[str, Any] | None = None

    @cached_property
    def inbound(self) -> InboundRequest:
        """The dialect-neutral request, in the chat shape."""
        messages = input_messages(self.input)
        if self.instructions:
            messages.insert(0, {"role": "system", "content": self.instructions})
        if not messages:
            raise BadRequest("'input' must not be empty.", param="input", code="invalid_value")
        params: dict[str, Any] = {}
        for name in ("temperature", "top_p", "parallel_tool_calls", "user"):
            if (value := getattr(self, name)) is not None:
                params[name] = value
        if self.tools:
            params["tools"] = [
                {"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)}
                for t in self.tools
            ]
        if self.tool_choice is not None:
            params["tool_choice"] = _tool_choice(self.tool_choice)
        if (response_format := self._response_format()) is not None:
            params["response_format"] = response_format
        return InboundRequest(
            model=self.model,
            messages=messages,
            stream=self.stream,
            max_tokens=self.max_output_tokens,
            seed=self.seed,
            params=params,
            fake=self.fake,
            background=bool(self.background),
        )

    def _response_format(self) -> dict[str, Any] | None:
        fmt = self.text.format if self.text else None
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return {"type": "json_object"}
        if fmt.schema_ is None or not fmt.name:
            raise BadRequest(
                "A json_schema format needs 'name' and 'schema'.",
                param="text.format",
                code="invalid_value",
            )
        schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        return {"type": "json_schema", "json_schema": schema}

    def echo(self) -> dict[str, Any]:
        """The request's settings as the ``response`` object repeats them."""
        tools = [t.model_dump(exclude_none=False) for t in self.tools or ()]
        fmt = (
            self.text.format.model_dump(by_alias=True, exclude_none=True)
            if (self.text and self.text.format)
            else {"type": "text"}
        )
        return {
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "metadata": self.metadata or {},
            "parallel_tool_calls": self.parallel_tool_calls is not False,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "tool_choice": self.tool_choice if self.tool_choice is not None else "auto",
            "tools": tools,
            "text": {"format": fmt},
            "background": bool(self.background),
            "store": self.store is not False,
            "user": self.user,
        }

    def encoder(self, reply_id: str, created: int) -> ResponsesEncoder:
        """The encoder of this request's stream."""
        return ResponsesEncoder(ResponseShell(reply_id, created, self.model, self.echo()))

    def pending(self, reply_id: str, created: int) -> dict[str, Any]:
        """The ``response`` object of a background reply still running."""
        return ResponseShell(reply_id, created, self.model, self.echo()).response("in_progress", [])

    def completion(self, reply: Completed) -> dict[str, Any]:
        """The whole ``response`` object."""
        shell = ResponseShell(reply.id, reply.created, self.model, self.echo())
        output: list[dict[str, Any]] = []
        status = "incomplete" if reply.finish in _INCOMPLETE_REASONS else "completed"
        if reply.text or not reply.tool_calls:
            output.append(shell.message_item(0, reply.text, status))
        for call in reply.tool_calls:
            function = call["function"]
            item = shell.function_item(len(output), call["id"], function["name"])
            output.append({**item, "arguments": function["arguments"], "status": "completed"})
        return shell.response(
            _status_of(reply.finish),
            output,
            usage=usage_body(reply.prompt_tokens, reply.completion_tokens),
            finish=reply.finish,
        )


def _status_of(finish: FinishReason) -> str:
    return "incomplete" if finish in _INCOMPLETE_REASONS else "completed"


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise BadRequest(f"Invalid value for 'tool_choice': {choice!r}.", param="tool_choice")
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise BadRequest("Only function tool choices are supported.", param="tool_choice")


def input_messages(given: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses ``input`` -> chat messages (function calls grouped per assistant turn)."""
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(given):
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise BadRequest(f"Invalid role {role!r}.", param=f"input[{i}].role")
            messages.append({"role": role, "content": _content(item.get("content"), i)})
        elif kind == "function_call":
            call = {
                "id": _string(item, "call_id", i),
                "type": "function",
                "function": {
                    "name": _string(item, "name", i),
                    "arguments": _string(item, "arguments", i),
                },
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else orjson.dumps(output).decode()
            messages.append(
                {"role": "tool", "tool_call_id": _string(item, "call_id", i), "content": content}
            )
        elif kind == "reasoning":
            continue  # nothing to replay to a model that does not reason
        else:
            raise BadRequest(f"Unsupported input item type {kind!r}.", param=f"input[{i}].type")
    return messages


def _string(item: dict[str, Any], key: str, i: int) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise BadRequest(f"'{key}' must be a string.", param=f"input[{i}].{key}")
    return value


def _content(content: Any, i: int) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest("'content' must be a string or a list.", param=f"input[{i}].content")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise BadRequest(
                f"Unsupported content part {kind!r}.", param=f"input[{i}].content[{j}]"
            )
    return parts


def usage_body(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """Responses usage (no caching, no reasoning)."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


class ResponseShell:
    """Builds the ``response`` object and its items for one reply."""

    def __init__(self, reply_id: str, created: int, model: str, echo: dict[str, Any]) -> None:
        self.id = reply_id
        self.created = created
        self.model = model
        self.echo = echo
        self._suffix = reply_id.removeprefix("resp_")

    def message_id(self, output_index: int) -> str:
        return f"msg_{self._suffix}_{output_index}"

    def message_item(self, output_index: int, text: str, status: str) -> dict[str, Any]:
        return {
            "id": self.message_id(output_index),
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": [text_part(text)],
        }

    def function_item(self, output_index: int, call_id: str | None, name: str) -> dict[str, Any]:
        return {
            "id": f"fc_{self._suffix}_{output_index}",
            "type": "function_call",
            "call_id": call_id or f"call_{self._suffix}_{output_index}",
            "name": name,
            "arguments": "",
            "status": "in_progress",
        }

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        *,
        usage: dict[str, Any] | None = None,
        finish: FinishReason | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        reason = _INCOMPLETE_REASONS.get(finish or "")
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "error": error,
            "incomplete_details": {"reason": reason} if reason else None,
            "model": self.model,
            "output": output,
            "usage": usage,
            **self.echo,
        }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class ResponsesEncoder:
    """The :class:`~gateway.dialects.base.Encoder` of the Responses API.

    Output items open lazily: the message item (and its content part) on the first
    token, a function-call item on a tool call's first fragment; the open item is
    closed before another opens and at the finish. The per-token frame is built from
    a byte template made when the message item opens.
    """

    #: The SSE ids are the ``sequence_number`` s, which OpenAI counts from 0.
    first_id = 0

    def __init__(self, shell: ResponseShell) -> None:
        self._shell = shell
        self._seq = self.first_id
        #: The response object of the terminal event, once sent.
        self._final: dict[str, Any] | None = None
        self._output: list[dict[str, Any]] = []
        #: The open item: its index in ``_output``, and its text pieces or arguments.
        self._open: int | None = None
        self._pieces: list[str] = []
        self._calls: dict[int, int] = {}  # tool call index -> output index
        self._delta_head = self._delta_mid = self._delta_tail = b""
        self._finish: FinishReason = "stop"

    def _event(self, kind: str, body: dict[str, Any]) -> bytes:
        payload = {"type": kind, "sequence_number": self._seq, **body}
        self._seq += 1
        return framer.named_prefix(kind) + orjson.dumps(payload) + framer.END

    def start(self) -> bytes:
        """``response.created`` and ``response.in_progress``."""
        shell = self._shell
        return self._event(
            "response.created", {"response": shell.response("in_progress", [])}
        ) + self._event("response.in_progress", {"response": shell.response("in_progress", [])})

    def text(self, text: str) -> bytes:
        """One ``response.output_text.delta``: the per-token hot path."""
        opening = b""
        if self._open is None or self._output[self._open]["type"] != "message":
            opening = self._open_message()
        self._pieces.append(text)
        seq = self._seq
        self._seq += 1
        return (
            opening
            + self._delta_head
            + str(seq).encode()
            + self._delta_mid
            + orjson.dumps(text)
            + self._delta_tail
        )

    def _open_message(self) -> bytes:
        frames = self._close()
        index = len(self._output)
        item = self._shell.message_item(index, "", "in_progress")
        item["content"] = []
        self._output.append(item)
        self._open = index
        self._pieces = []
        item_id = item["id"]
        self._delta_head = (
            framer.named_prefix("response.output_text.delta")
            + b'{"type":"response.output_text.delta","sequence_number":'
        )
        self._delta_mid = (
            b',"item_id":'
            + orjson.dumps(item_id)
            + b',"output_index":'
            + str(index).encode()
            + b',"content_index":0,"delta":'
        )
        self._delta_tail = b',"logprobs":[]}' + framer.END
        return (
            frames
            + self._event("response.output_item.added", {"output_index": index, "item": item})
            + self._event(
                "response.content_part.added",
                {
                    "item_id": item_id,
                    "output_index": index,
                    "content_index": 0,
                    "part": text_part(""),
                },
            )
        )

    def tool_call(self, delta: ToolCallDelta) -> bytes:
        """A function-call item's start, or one ``function_call_arguments.delta``."""
        frames = b""
        index = self._calls.get(delta.index)
        if index is None:
            frames = self._close()
            index = len(self._output)
            item = self._shell.function_item(index, delta.id, delta.name or "")
            self._output.append(item)
            self._calls[delta.index] = self._open = index
            self._pieces = []
            frames += self._event(
                "response.output_item.added", {"output_index": index, "item": item}
            )
        if delta.arguments:
            self._output[index]["arguments"] += delta.arguments
            frames += self._event(
                "response.function_call_arguments.delta",
                {
                    "item_id": self._output[index]["id"],
                    "output_index": index,
                    "delta": delta.arguments,
                },
            )
        return frames

    def _close(self, status: str = "completed") -> bytes:
        """The done events of the open item, if any."""
        index = self._open
        if index is None:
            return b""
        self._open = None
        item = self._output[index]
        if item["type"] == "function_call":
            item["status"] = "completed"
            return self._event(
                "response.function_call_arguments.done",
                {
                    "item_id": item["id"],
                    "output_index": index,
                    "name": item["name"],
                    "arguments": item["arguments"],
                },
            ) + self._event("response.output_item.done", {"output_index": index, "item": item})
        text = "".join(self._pieces)
        item["content"] = [text_part(text)]
        item["status"] = status
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        return (
            self._event("response.output_text.done", {**where, "text": text, "logprobs": []})
            + self._event("response.content_part.done", {**where, "part": text_part(text)})
            + self._event("response.output_item.done", {"output_index": index, "item": item})
        )

    def finish(self, reason: FinishReason, stop_sequence: str | None = None) -> bytes:
        """Close the open item (a reply with no output still gets an empty message)."""
        self._finish = reason
        frames = self._open_message() if not self._output else b""
        return frames + self._close(_status_of(reason) if reason != "tool_calls" else "completed")

    def end(self, usage: UsageCounts) -> bytes:
        """``response.completed``, or ``response.incomplete`` when cut by a limit."""
        prompt_tokens, completion_tokens = usage()
        status = _status_of(self._finish)
        response = self._shell.response(
            status,
            self._output,
            usage=usage_body(prompt_tokens, completion_tokens),
            finish=self._finish,
        )
        self._final = response
        return self._event(f"response.{status}", {"response": response})

    def error(self, exc: GatewayError) -> bytes:
        """``response.failed`` with the error; never ``response.completed`` after it.

        A cancelled reply's response has ``"status": "cancelled"`` and no ``error``
        (OpenAI's error codes have none for it), as ``POST .../cancel`` answers it.
        """
        for item in self._output:
            if item["status"] == "in_progress":
                item["status"] = "incomplete"
        if self._open is not None and self._output[self._open]["type"] == "message":
            self._output[self._open]["content"] = [text_part("".join(self._pieces))]
        # A resumed reader's error is rebuilt from the log: known by its code.
        if exc.code == ReplyCancelled.code:
            response = self._shell.response("cancelled", self._output)
        else:
            code = "rate_limit_exceeded" if isinstance(exc, UpstreamRateLimited) else "server_error"
            response = self._shell.response(
                "failed", self._output, error={"code": code, "message": exc.message}
            )
        self._final = response
        return self._event("response.failed", {"response": response})

    def snapshot(self) -> dict[str, Any]:
        """The ``response`` object as the events so far make it.

        The terminal event's once it was made; before, ``in_progress`` with the
        output so far (the open message's text included).
        """
        if self._final is not None:
            return self._final
        output = [dict(item) for item in self._output]
        if self._open is not None and output[self._open]["type"] == "message":
            output[self._open]["content"] = [text_part("".join(self._pieces))]
        return self._shell.response("in_progress", output)


class ResponsesDialect:
    """``POST /v1/responses``: the :class:`~gateway.dialects.base.Dialect`."""

    name = "responses"
    operation = "chat"
    id_prefix = "resp_"

    def parse(self, body: bytes) -> ResponsesRequest:
        """Validate the body; the translation to the chat shape happens in ``inbound``."""
        parsed = validate(ResponsesRequest, body)
        _ = parsed.inbound  # translation errors are 400s now, not later
        return parsed

    def error_body(self, exc: GatewayError) -> dict[str, Any]:
        """OpenAI's ``{"error": {...}}``."""
        return exc.body()


RESPONSES = ResponsesDialect()
