"""First-token and idle timeouts: 504 before streaming, one in-band error after."""

from __future__ import annotations

import time
from typing import Any

import orjson

from tests.support.sse_client import stream_request

SLOW = {
    "name": "slow",
    "provider": "fake",
    "retries": 0,
    "timeouts": {"first_token": 0.3, "idle": 0.3},
}


def body(**fake: Any) -> dict[str, Any]:
    return {
        "model": "slow",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "fake": fake,
    }


async def test_first_token_timeout_is_504(make_gateway: Any) -> None:
    url = await make_gateway(models=[SLOW])
    started = time.monotonic()
    got = await stream_request(url, body(ttft_ms=5000))
    elapsed = time.monotonic() - started
    assert got.status == 504
    error = orjson.loads(got.raw)["error"]
    assert error["type"] == "timeout_error"
    assert "0.3 s" in error["message"]
    assert elapsed < 4  # fired long before the 5 s first token


async def test_idle_timeout_after_tokens_is_in_band(make_gateway: Any) -> None:
    # Regression: the idle timer used to wait for the 15 s heartbeat wake-up.
    url = await make_gateway(models=[SLOW])
    started = time.monotonic()
    got = await stream_request(url, body(stall_after=5))
    assert time.monotonic() - started < 10
    assert got.status == 200
    error = orjson.loads(got.data[-1])["error"]
    assert error["type"] == "timeout_error"
    assert "idle" in error["message"]
    assert "[DONE]" not in got.data
    assert all(c["choices"][0]["finish_reason"] is None for c in got.chunks[:-1])
    assert len(got.text) > 0


async def test_idle_timeout_non_streaming_is_504(make_gateway: Any) -> None:
    url = await make_gateway(models=[SLOW])
    got = await stream_request(url, {**body(stall_after=5), "stream": False})
    assert got.status == 504
    assert orjson.loads(got.raw)["error"]["code"] == "upstream_timeout"
