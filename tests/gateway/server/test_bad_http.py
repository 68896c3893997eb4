"""Malformed HTTP, Expect: 100-continue and kept-alive slow-loris, against the real server.

Named after the findings of the hardening issue (log flooding, text/plain parser
errors, 100 Continue before a 413, no header deadline on the second request).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import orjson

from tests.gateway.http.test_limits import read_all
from tests.support.gateway import GatewayProcess


def json_lines(logs: str) -> list[dict[str, object]]:
    out = []
    for line in logs.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"event": "NOT JSON", "line": line})
    return out


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(data)
        return read_all(sock, timeout)


def test_malformed_http_is_one_json_line_and_an_openai_error(
    gateway_process: Callable[..., GatewayProcess],
) -> None:
    proc = gateway_process()
    for _ in range(30):
        reply = exchange(
            proc.port, b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n"
        )
        assert reply.split(b" ", 2)[1] == b"400", reply[:200]
        head, _, body = reply.partition(b"\r\n\r\n")
        assert b"application/json" in head
        error = orjson.loads(body)["error"]
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "invalid_http"
    time.sleep(0.2)
    lines = json_lines(proc.stop()[1])
    assert not [entry for entry in lines if entry["event"] == "NOT JSON"], lines[:5]
    malformed = [entry for entry in lines if entry["event"] == "http_malformed"]
    # Rate-limited: 30 identical errors, at most 5 lines per reason per 10 s.
    assert 1 <= len(malformed) <= 5
    assert malformed[0]["client"] == "127.0.0.1"
    assert malformed[0]["reason"]
    assert "Traceback" not in json.dumps(lines)


def test_expect_100_continue_over_the_limit_gets_413_at_once(
    gateway_process: Callable[..., GatewayProcess],
) -> None:
    proc = gateway_process(env={"TOKENPIPE_MAX_BODY_BYTES": "2048"})
    reply = exchange(
        proc.port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: 999999\r\n"
        b"Expect: 100-continue\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
    assert b"100 Continue" not in reply
    assert orjson.loads(reply.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_too_large"
    # Within the limit, the client is told to go on.
    with socket.create_connection(("127.0.0.1", proc.port)) as sock:
        sock.settimeout(5)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 10\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")


def test_header_deadline_applies_to_the_second_request_on_a_connection(
    gateway_process: Callable[..., GatewayProcess],
) -> None:
    proc = gateway_process(env={"TOKENPIPE_REQUEST_READ_TIMEOUT_SECONDS": "0.5"})
    with socket.create_connection(("127.0.0.1", proc.port)) as sock:
        sock.settimeout(5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        start = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # and nothing more
        reply = read_all(sock, timeout=10)
        elapsed = time.monotonic() - start
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert elapsed < 3, elapsed
