"""Every malformed request gets the right status and an OpenAI error body."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

OK_MSG = [{"role": "user", "content": "hi"}]

# (description, raw body or JSON, status, param, code)
CASES: list[tuple[str, Any, int, str | None, str | None]] = [
    ("invalid JSON", b'{"model": "fake",', 400, None, "invalid_json"),
    ("empty body", b"", 400, None, "invalid_json"),
    ("not an object", b"[1, 2]", 400, None, "invalid_json"),
    ("invalid UTF-8", b'{"model": "\xff\xfe"}', 400, None, "invalid_json"),
    ("missing model", {"messages": OK_MSG}, 400, "model", "invalid_value"),
    ("empty model", {"model": "", "messages": OK_MSG}, 400, "model", "invalid_value"),
    ("missing messages", {"model": "fake"}, 400, "messages", "invalid_value"),
    ("empty messages", {"model": "fake", "messages": []}, 400, "messages", "invalid_value"),
    (
        "unknown role",
        {"model": "fake", "messages": [{"role": "robot", "content": "x"}]},
        400,
        "messages[0].role",
        "invalid_value",
    ),
    (
        "content wrong type",
        {"model": "fake", "messages": [{"role": "user", "content": 5}]},
        400,
        "messages[0].content",
        "invalid_value",
    ),
    (
        "user without content",
        {"model": "fake", "messages": [*OK_MSG, {"role": "user"}]},
        400,
        "messages[1]",
        "invalid_value",
    ),
    (
        "max_tokens as string",
        {"model": "fake", "messages": OK_MSG, "max_tokens": "5"},
        400,
        "max_tokens",
        "invalid_value",
    ),
    (
        "max_tokens zero",
        {"model": "fake", "messages": OK_MSG, "max_tokens": 0},
        400,
        "max_tokens",
        "invalid_value",
    ),
    (
        "temperature out of range",
        {"model": "fake", "messages": OK_MSG, "temperature": 3},
        400,
        "temperature",
        "invalid_value",
    ),
    (
        "stream not a bool",
        {"model": "fake", "messages": OK_MSG, "stream": "yes"},
        400,
        "stream",
        "invalid_value",
    ),
    ("n above 1", {"model": "fake", "messages": OK_MSG, "n": 2}, 400, "n", "invalid_value"),
    (
        "bad fake knob",
        {"model": "fake", "messages": OK_MSG, "fake": {"reply_tokens": -1}},
        400,
        "fake.reply_tokens",
        "invalid_value",
    ),
    (
        "unknown fake knob",
        {"model": "fake", "messages": OK_MSG, "fake": {"speed": 1}},
        400,
        "fake.speed",
        "invalid_value",
    ),
    ("unknown model", {"model": "gpt-9", "messages": OK_MSG}, 404, "model", "model_not_found"),
]


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
async def test_bad_request_error_body(
    gateway_url: str, body: Any, status: int, param: str | None, code: str | None
) -> None:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway_url}/v1/chat/completions",
            data=data,
            headers={"Content-Type": "application/json"},
        ) as resp,
    ):
        assert resp.status == status
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["code"] == code
    assert error["message"]
    assert "Traceback" not in error["message"]


async def test_unknown_model_message_names_available_ones(gateway_url: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway_url}/v1/chat/completions", json={"model": "gpt-9", "messages": OK_MSG}
        ) as resp,
    ):
        error = (await resp.json())["error"]
    assert "gpt-9" in error["message"]
    assert "fake" in error["message"]
    assert "fake-fast" in error["message"]


async def test_wrong_method_is_405_with_allow(gateway_url: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gateway_url}/v1/chat/completions") as resp,
    ):
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
        error = (await resp.json())["error"]
    assert error["code"] == "method_not_allowed"


async def test_unknown_route_is_404_json(gateway_url: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{gateway_url}/v2/nothing") as resp:
        assert resp.status == 404
        assert set((await resp.json())["error"]) == {"message", "type", "param", "code"}


async def test_body_over_limit_is_413_before_reading(make_gateway: Any) -> None:
    url = await make_gateway(max_body_bytes=4096)
    big = orjson.dumps({"model": "fake", "messages": [{"role": "user", "content": "x" * 10_000}]})
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", data=big) as resp,
    ):
        assert resp.status == 413
        error = (await resp.json())["error"]
    assert error["code"] == "request_too_large"
    assert "4096" in error["message"]


async def test_chunked_body_over_limit_is_413(make_gateway: Any) -> None:
    url = await make_gateway(max_body_bytes=4096)

    async def body() -> Any:
        for _ in range(20):
            yield b"x" * 1024

    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", data=body()) as resp,
    ):
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "request_too_large"


async def test_extra_fields_and_all_roles_accepted(gateway_url: str) -> None:
    body = {
        "model": "fake-fast",
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "developer", "content": "dev"},
            {"role": "user", "content": [{"type": "text", "text": "parts"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "user", "content": "thanks", "name": "ann"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": "auto",
        "logit_bias": {"50256": -100},
        "user": "u-1",
        "metadata": {"k": "v"},
        "some_future_field": {"nested": [1, 2]},
        "max_tokens": 3,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gateway_url}/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200
        data = await resp.json()
    assert data["choices"][0]["finish_reason"] == "length"
