"""Translating an OpenAI-shaped chat request into an Anthropic Messages API request.

System and developer messages move to ``system``; assistant ``tool_calls`` become
``tool_use`` blocks and ``tool`` messages user ``tool_result`` blocks; consecutive
messages of one role are merged, as the Messages API requires; OpenAI function tools
and ``tool_choice`` are mapped. A request that cannot be translated raises
:class:`ProviderBadRequest` before anything is sent.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from providers.base import ChatRequest
from providers.errors import ProviderBadRequest

DEFAULT_MAX_TOKENS: Final = 4096


def request_body(request: ChatRequest) -> dict[str, Any]:
    """The Messages API request body for ``request`` (raises :class:`ProviderBadRequest`)."""
    system, messages = translate_messages(request.messages)
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": DEFAULT_MAX_TOKENS if request.max_tokens is None else request.max_tokens,
        "messages": messages,
        "stream": True,
    }
    if system:
        body["system"] = system
    params = request.params
    for key in ("temperature", "top_p", "top_k"):
        if params.get(key) is not None:
            body[key] = params[key]
    stop = params.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    tools = params.get("tools")
    if tools:
        body["tools"] = [_tool(tool) for tool in tools]
        choice = _tool_choice(params.get("tool_choice"), params.get("parallel_tool_calls"))
        if choice is not None:
            body["tool_choice"] = choice
    if params.get("user"):
        body["metadata"] = {"user_id": str(params["user"])}
    return body


def translate_messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Split OpenAI chat messages into Anthropic's ``system`` text and ``messages``."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            if text := _text_of(content):
                system.append(text)
            continue
        if role == "user":
            blocks = _blocks(content)
        elif role == "assistant":
            blocks = _blocks(content) + [_tool_use(c) for c in message.get("tool_calls") or ()]
        elif role == "tool":
            role = "user"
            result = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
            blocks = [{**result, "content": _text_of(content)}]
        else:
            raise ProviderBadRequest(f"unsupported message role: {role!r}")
        if not blocks:
            continue  # Anthropic rejects empty content.
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    for merged in out:
        # Tool results must open a user turn; sort is stable for the rest.
        merged["content"].sort(key=lambda block: block["type"] != "tool_result")
    return "\n\n".join(system), out


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(
        part.get("text", "")
        for part in content
        if isinstance(part, dict) and part.get("type") == "text"
    )


def _blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url")))
        else:
            raise ProviderBadRequest(f"unsupported content part type: {kind!r}")
    return blocks


def _image(image_url: Any) -> dict[str, Any]:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str):
        raise ProviderBadRequest("image_url without a url")
    if url.startswith("data:"):
        header, _, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if encoding != "base64":
            raise ProviderBadRequest("image data URLs must be base64")
        source = {"type": "base64", "media_type": media_type, "data": data}
        return {"type": "image", "source": source}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _tool_use(call: Any) -> dict[str, Any]:
    function = call.get("function") or {}
    try:
        arguments = orjson.loads(function.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        raise ProviderBadRequest("tool call arguments are not valid JSON")
    if not isinstance(arguments, dict):
        raise ProviderBadRequest("tool call arguments must be a JSON object")
    return {
        "type": "tool_use",
        "id": call.get("id"),
        "name": function.get("name"),
        "input": arguments,
    }


def _tool(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise ProviderBadRequest("only function tools are supported")
    function = tool.get("function") or {}
    translated = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        translated["description"] = function["description"]
    return translated


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None and parallel is not False:
        return None
    if choice in (None, "auto"):
        translated: dict[str, Any] = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        translated = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        translated = {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    else:
        raise ProviderBadRequest(f"unsupported tool_choice: {choice!r}")
    if parallel is False:
        translated["disable_parallel_tool_use"] = True
    return translated
