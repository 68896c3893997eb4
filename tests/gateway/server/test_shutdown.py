"""Graceful drain on SIGTERM/SIGINT, with one server process and with workers."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable

import orjson
import pytest

from tests.support.gateway import GatewayProcess
from tests.support.sse_client import chat, parse_events


def http(port: int, method: str, path: str, body: bytes = b"", timeout: float = 30) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def dechunk(raw: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 response."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    out = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


def start_stream(port: int, body: dict[str, object]) -> tuple[threading.Thread, list[bytes]]:
    result: list[bytes] = []
    thread = threading.Thread(
        target=lambda: result.append(http(port, "POST", "/v1/chat/completions", orjson.dumps(body)))
    )
    thread.start()
    return thread, result


def wait_active(port: int, count: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        health = orjson.loads(http(port, "GET", "/healthz").partition(b"\r\n\r\n")[2])
        if health["active_streams"] >= count:
            return
        time.sleep(0.05)
    raise AssertionError("stream did not start")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_in_flight_stream_and_refuses_new(
    gateway_process: Callable[..., GatewayProcess], signum: signal.Signals
) -> None:
    proc = gateway_process(env={"TOKENPIPE_DRAIN_SECONDS": "20"})
    body = chat(fake={"tokens_per_second": 20, "reply_tokens": 40})
    thread, result = start_stream(proc.port, body)
    wait_active(proc.port, 1)
    proc.proc.send_signal(signum)
    time.sleep(0.3)
    health = http(proc.port, "GET", "/healthz")
    refused = http(proc.port, "POST", "/v1/chat/completions", orjson.dumps(chat(max_tokens=2)))
    thread.join(timeout=30)
    # The gateway exits by itself once drained; stop() would send a second SIGTERM
    # to one still finishing (regression: exit -15 under CI load).
    proc.proc.wait(timeout=30)
    code, logs = proc.stop()
    assert health.startswith(b"HTTP/1.1 503")
    assert b'"status":"draining"' in health
    assert refused.startswith(b"HTTP/1.1 503")
    assert orjson.loads(refused.partition(b"\r\n\r\n")[2])["error"]["code"] == (
        "server_shutting_down"
    )
    data, _ = parse_events(dechunk(result[0]))
    assert data[-1] == "[DONE]"
    assert sum(1 for d in data if '"content":' in d) == 41  # role chunk + 40 tokens
    assert code == 0
    assert '"event":"gateway_stopped"' in logs


def test_drain_deadline_cuts_with_one_in_band_error(
    gateway_process: Callable[..., GatewayProcess],
) -> None:
    proc = gateway_process(env={"TOKENPIPE_DRAIN_SECONDS": "0.5"})
    thread, result = start_stream(proc.port, chat(fake={"tokens_per_second": 10}))
    wait_active(proc.port, 1)
    proc.proc.send_signal(signal.SIGTERM)
    thread.join(timeout=30)
    code, logs = proc.stop()
    data, _ = parse_events(dechunk(result[0]))
    assert "[DONE]" not in data
    error = orjson.loads(data[-1])["error"]
    assert error["code"] == "server_shutting_down"
    assert sum(1 for d in data if '"error"' in d) == 1
    assert code == 0
    reasons = [
        line["reason"]
        for line in map(orjson.loads, logs.splitlines())
        if line.get("event") == "stream_finished"
    ]
    assert reasons == ["shutdown"]


def test_workers_share_the_port_and_all_drain(
    gateway_process: Callable[..., GatewayProcess],
) -> None:
    proc = gateway_process("--workers", "2", env={"TOKENPIPE_DRAIN_SECONDS": "20"})
    pids = set()
    deadline = time.monotonic() + 20
    while len(pids) < 2 and time.monotonic() < deadline:
        try:
            reply = http(proc.port, "GET", "/healthz", timeout=5)
        except OSError:
            time.sleep(0.1)
            continue
        if reply.startswith(b"HTTP/1.1 200"):
            pids.add(orjson.loads(reply.partition(b"\r\n\r\n")[2])["pid"])
    assert len(pids) == 2
    assert proc.proc.pid not in pids
    streams = [
        start_stream(proc.port, chat(fake={"tokens_per_second": 25, "reply_tokens": 30}))
        for _ in range(6)
    ]
    time.sleep(0.5)
    proc.proc.send_signal(signal.SIGTERM)
    for thread, _ in streams:
        thread.join(timeout=30)
    code, logs = proc.stop()
    for _, result in streams:
        data, _ = parse_events(dechunk(result[0]))
        assert data[-1] == "[DONE]"
    assert code == 0
    assert logs.count('"event":"gateway_stopped"') == 2
