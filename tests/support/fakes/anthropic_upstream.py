"""A fake Anthropic Messages API upstream: a real aiohttp server, real wire format.

Same API as :class:`tests.support.fakes.openai_upstream.FakeOpenAIUpstream` (``script`` of
:class:`Behaviour`, ``requests``, ``wait_closed()``, ``x_fake`` overrides), serving
``POST /v1/messages``. Its :attr:`base_url` follows the Anthropic SDK's convention:
the server root, without ``/v1``.

A streamed reply is ``message_start``, a text block (``content_block_start``, ``ping``,
``text_delta``s, ``content_block_stop``), one ``tool_use`` block per tool call
(``input_json_delta`` pieces), ``message_delta`` (stop reason, output tokens) and
``message_stop``. ``Behaviour.finish_reason`` is given in OpenAI terms (``stop``,
``length``, ``tool_calls``) or directly as an Anthropic ``stop_reason``. Like the real
API, the fake answers 400 when ``max_tokens`` is missing or a message has a role
other than ``user`` / ``assistant``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tests.support.fakes.openai_upstream import (
    CUT,
    Behaviour,
    FakeUpstream,
    ReceivedRequest,
    ToolCallSpec,
    expected_text,
    token_text,
)

__all__ = [
    "Behaviour",
    "FakeAnthropicUpstream",
    "ReceivedRequest",
    "ToolCallSpec",
    "expected_text",
    "token_text",
]

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


class FakeAnthropicUpstream(FakeUpstream):
    """``POST /v1/messages``, streaming or not."""

    base_path = ""

    def routes(self) -> list[web.RouteDef]:
        """The Anthropic endpoint the fake serves."""
        return [web.post("/v1/messages", self._messages)]

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        received, behaviour = await self.record(request)
        body = received.json if isinstance(received.json, dict) else {}
        if behaviour.status is not None:
            return self._error_response(behaviour, request)
        if problem := _invalid(body):
            return web.json_response(_error_body("invalid_request_error", problem), status=400)
        if not body.get("stream"):
            return web.json_response(_message(body, behaviour))
        return await self.serve_stream(request, received, behaviour, _stream(body, behaviour))

    def _error_response(self, behaviour: Behaviour, request: web.Request) -> web.Response:
        status = behaviour.status or 500
        kind = _ERROR_TYPES.get(status, "api_error")
        message = behaviour.error_message or f"fake upstream error {status}"
        if status == 401:
            # Harsher than the real API: tests check the key is never relayed.
            message = f"invalid x-api-key: {request.headers.get('x-api-key', '')}"
        headers = dict(behaviour.headers)
        if behaviour.retry_after is not None:
            headers["retry-after"] = behaviour.retry_after
        return web.json_response(_error_body(kind, message), status=status, headers=headers)


def _invalid(body: dict[str, Any]) -> str | None:
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    for n, message in enumerate(body.get("messages") or []):
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{n}.role: Input should be 'user' or 'assistant'"
    return None


def _words(content: Any) -> int:
    if isinstance(content, list):
        return sum(_words(block.get("text", "")) for block in content if isinstance(block, dict))
    return len(str(content or "").split())


def _input_tokens(body: dict[str, Any]) -> int:
    """System words, plus words + 3 per message: deterministic, roughly token-like."""
    messages = body.get("messages") or []
    return _words(body.get("system")) + sum(_words(m.get("content")) + 3 for m in messages)


def _stop_reason(behaviour: Behaviour) -> str:
    return _STOP_REASONS.get(behaviour.reason, behaviour.reason)


def _message(body: dict[str, Any], behaviour: Behaviour) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": expected_text(behaviour.tokens)}]
    for call in behaviour.tool_calls:
        tool_input = orjson.loads(call.arguments or "{}")
        content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input})
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", "fake-upstream"),
        "content": content,
        "stop_reason": _stop_reason(behaviour),
        "stop_sequence": None,
        "usage": {"input_tokens": _input_tokens(body), "output_tokens": behaviour.tokens},
    }


async def _stream(body: dict[str, Any], behaviour: Behaviour) -> Any:
    """The event bytes of a streamed reply; :data:`CUT` means: abort the connection now."""
    if behaviour.raw:
        # Hostile-upstream tests: whole SSE frames (bytes) or event objects, as given.
        for payload in behaviour.raw:
            if isinstance(payload, bytes):
                yield payload
            else:
                yield _event(str(payload.get("type", "message")), payload)
        return
    usage = {"input_tokens": _input_tokens(body), "output_tokens": 1}
    message = {**_message(body, behaviour), "content": [], "stop_reason": None, "usage": usage}
    yield _event("message_start", {"type": "message_start", "message": message})
    text_block = {"type": "text", "text": ""}
    start = {"type": "content_block_start", "index": 0, "content_block": text_block}
    yield _event("content_block_start", start)
    yield _event("ping", {"type": "ping"})
    async for step, i in behaviour.steps():
        if step == "error":
            yield _event("error", _error_body(behaviour.error_type, "fake in-band error"))
            return
        if step == "cut":
            yield CUT
            return
        if step == "ping":
            yield _event("ping", {"type": "ping"})
            continue
        delta = {"type": "text_delta", "text": token_text(i)}
        yield _event(
            "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
        )
    yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
    for n, call in enumerate(behaviour.tool_calls, start=1):
        block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
        yield _event(
            "content_block_start",
            {"type": "content_block_start", "index": n, "content_block": block},
        )
        for offset in range(0, len(call.arguments), 4):
            delta = {
                "type": "input_json_delta",
                "partial_json": call.arguments[offset : offset + 4],
            }
            yield _event(
                "content_block_delta", {"type": "content_block_delta", "index": n, "delta": delta}
            )
        yield _event("content_block_stop", {"type": "content_block_stop", "index": n})
    if not behaviour.finish:
        return
    stop = {"stop_reason": _stop_reason(behaviour), "stop_sequence": None}
    out_usage = {"output_tokens": behaviour.tokens}
    yield _event("message_delta", {"type": "message_delta", "delta": stop, "usage": out_usage})
    yield _event("message_stop", {"type": "message_stop"})
