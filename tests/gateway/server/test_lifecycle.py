"""Logging of each stream, disconnects cancelling generation, keep-alives, health."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

import aiohttp
import orjson
import structlog
from structlog.testing import capture_logs

from tests.support.sse_client import chat, stream_request


async def wait_for_event(
    logs: list[dict[str, Any]], event: str, timeout: float = 10.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in logs:
            if entry["event"] == event:
                return entry
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {event} logged; got {[e['event'] for e in logs]}")


async def test_stream_finished_logged_once_with_fields(gateway_url: str) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await stream_request(gateway_url, chat(max_tokens=12), {"X-Request-ID": "log-1"})
        entry = await wait_for_event(logs, "stream_finished")
    finished = [e for e in logs if e["event"] == "stream_finished"]
    assert len(finished) == 1
    assert entry["request_id"] == "log-1"
    assert entry["model"] == "fake-fast"
    assert entry["provider"] == "fake"
    assert entry["reason"] == "length"
    assert entry["completion_tokens"] == 12
    assert entry["ttft_ms"] >= 0
    assert entry["duration_ms"] >= entry["ttft_ms"]


def raw_post(port: int, body: dict[str, Any]) -> socket.socket:
    payload = orjson.dumps(body)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


async def test_client_gone_mid_stream_cancels_generation(gateway_url: str) -> None:
    port = int(gateway_url.rsplit(":", 1)[1])
    body = chat(fake={"tokens_per_second": 50, "reply_tokens": 1000})
    with capture_logs() as logs:
        sock = await asyncio.to_thread(raw_post, port, body)
        first = await asyncio.to_thread(sock.recv, 65536)
        assert b"200 OK" in first
        closed_at = time.monotonic()
        sock.close()
        entry = await wait_for_event(logs, "stream_finished")
        noticed = time.monotonic() - closed_at
    assert entry["reason"] == "client_gone"
    assert entry["completion_tokens"] < 1000
    assert noticed < 5  # generous: typically a few ms


async def test_client_gone_before_first_token(gateway_url: str) -> None:
    port = int(gateway_url.rsplit(":", 1)[1])
    body = chat(fake={"ttft_ms": 60_000})
    with capture_logs() as logs:
        sock = await asyncio.to_thread(raw_post, port, body)
        await asyncio.sleep(0.2)
        sock.close()
        entry = await wait_for_event(logs, "stream_finished")
    assert entry["reason"] == "client_gone"
    assert entry["completion_tokens"] == 0


async def test_keepalive_ping_before_slow_first_token(make_gateway: Any) -> None:
    url = await make_gateway(heartbeat_seconds=0.2)
    got = await stream_request(url, chat(max_tokens=3, fake={"ttft_ms": 900}))
    assert got.status == 200
    assert got.raw.startswith(b": ping\n\n")
    assert got.comments.count("ping") >= 2
    assert got.data[-1] == "[DONE]"


async def test_keepalive_ping_during_stall(make_gateway: Any) -> None:
    url = await make_gateway(heartbeat_seconds=0.2)
    got = await stream_request(
        url, chat(max_tokens=6, fake={"stall_after": 3, "stall_seconds": 0.9})
    )
    assert got.comments.count("ping") >= 2
    assert got.data[-1] == "[DONE]"
    assert len(got.text) > 0


async def test_failure_after_ping_is_reported_in_band(make_gateway: Any) -> None:
    url = await make_gateway(heartbeat_seconds=0.1)
    got = await stream_request(url, chat(fake={"ttft_ms": 500, "fail_after": 0}))
    assert got.status == 200
    assert got.raw.startswith(b": ping\n\n")
    assert orjson.loads(got.data[-1])["error"]["type"] == "upstream_error"
    assert "[DONE]" not in got.data


async def test_healthz(gateway_url: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{gateway_url}/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok", "active_streams": 0, "pid": os.getpid()}
