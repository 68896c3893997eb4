"""Limits: concurrent streams, slow request senders (slow-loris), slow readers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import psutil
import pytest
from structlog.testing import capture_logs

from tests.support.gateway import GatewayProcess
from tests.support.sse_client import chat, stream_request


async def test_max_streams_gives_503_with_retry_after(make_gateway: Any) -> None:
    url = await make_gateway(max_streams=2)
    slow = chat(fake={"stall_after": 1})
    async with aiohttp.ClientSession() as session:
        held = [await session.post(f"{url}/v1/chat/completions", json=slow) for _ in range(2)]
        for resp in held:
            assert resp.status == 200
            await resp.content.readline()
        with capture_logs() as logs:
            got = await stream_request(url, chat(max_tokens=2))
        for resp in held:
            resp.close()
    assert got.status == 503
    assert got.headers["Retry-After"] == "1"
    error = orjson.loads(got.raw)["error"]
    assert error["code"] == "overloaded"
    assert "2 concurrent streams" in error["message"]
    assert [e["reason"] for e in logs if e["event"] == "stream_finished"] == ["rejected"]
    # Once the held streams are gone, new ones are served again.
    for _ in range(50):
        again = await stream_request(url, chat(max_tokens=2))
        if again.status == 200:
            break
        await asyncio.sleep(0.05)
    assert again.status == 200


def read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data + b"<timeout>"
    return data


def test_slowloris_headers_get_408_and_close(
    gateway_process: Callable[..., GatewayProcess],
) -> None:
    proc = gateway_process(env={"TOKENPIPE_REQUEST_READ_TIMEOUT_SECONDS": "0.5"})
    with socket.create_connection(("127.0.0.1", proc.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n")
        started = time.monotonic()
        reply = read_all(sock, timeout=10)
        elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    body = orjson.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "request_timeout"
    assert elapsed < 5  # closed by the server, not by our read timeout


def test_slow_body_gets_408(gateway_process: Callable[..., GatewayProcess]) -> None:
    proc = gateway_process(env={"TOKENPIPE_REQUEST_READ_TIMEOUT_SECONDS": "0.5"})
    with socket.create_connection(("127.0.0.1", proc.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{"
        )
        reply = read_all(sock, timeout=10)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert b'"code":"request_timeout"' in reply
    assert not reply.endswith(b"<timeout>")


def test_prompt_client_is_not_cut_by_the_header_deadline(
    gateway_process: Callable[..., GatewayProcess],
) -> None:
    proc = gateway_process(env={"TOKENPIPE_REQUEST_READ_TIMEOUT_SECONDS": "0.5"})
    body = orjson.dumps(chat(max_tokens=3, fake={"ttft_ms": 1500}))
    with socket.create_connection(("127.0.0.1", proc.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        reply = read_all(sock, timeout=15)
    # The reply took longer than the header deadline: the deadline was disarmed.
    assert reply.startswith(b"HTTP/1.1 200 OK")
    assert b"data: [DONE]" in reply


@pytest.mark.slow
def test_stalled_readers_bounded_memory_and_others_stay_fast(
    gateway_process: Callable[..., GatewayProcess],
) -> None:
    """Thirty clients that never read a 50,000-token reply: memory stays bounded,
    the send timeout drops them, and another client is served meanwhile."""
    proc = gateway_process(env={"TOKENPIPE_SEND_TIMEOUT_SECONDS": "3"})
    process = psutil.Process(proc.proc.pid)
    body = orjson.dumps(chat(fake={"reply_tokens": 50_000}))
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    # Warm up (tokenizer, caches) before measuring.
    with socket.create_connection(("127.0.0.1", proc.port)) as warm:
        warm.sendall(request)
        read_all(warm, timeout=1)
    time.sleep(0.5)
    before = process.memory_info().rss
    stalled = []
    for _ in range(30):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", proc.port))
        sock.sendall(request)
        stalled.append(sock)
    try:
        time.sleep(1.0)
        peak = process.memory_info().rss
        # Another client is served promptly while thirty are stuck.
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", proc.port)) as sock:
            small = orjson.dumps(chat(max_tokens=20))
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                + f"Content-Length: {len(small)}\r\n\r\n".encode()
                + small
            )
            reply = read_all(sock, timeout=10)
        served_in = time.monotonic() - started
        assert b"data: [DONE]" in reply
        assert served_in < 5
        # The send timeout drops them all, each with its upstream work cancelled.
        deadline = time.monotonic() + 30
        reasons: list[str] = []
        while time.monotonic() < deadline:
            reasons = [line["reason"] for line in proc.log_events("stream_finished")]
            if reasons.count("send_timeout") >= 30:
                break
            time.sleep(0.2)
        assert reasons.count("send_timeout") == 30, reasons
    finally:
        for sock in stalled:
            sock.close()
    growth_mb = (peak - before) / 2**20
    assert growth_mb < 40, f"RSS grew {growth_mb:.1f} MB for 30 stalled readers"
    health = orjson.loads(read_health(proc.port))
    assert health["active_streams"] == 0


def read_health(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return read_all(sock, timeout=5).split(b"\r\n\r\n", 1)[1]
