"""Shared fixtures: the gateway running for real on a loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from config import Settings
from gateway.app import create_app

ROOT = Path(__file__).resolve().parent.parent

MakeGateway = Callable[..., Awaitable[str]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def make_gateway() -> AsyncIterator[MakeGateway]:
    """Start gateways in this event loop: ``url = await make_gateway(**settings)``."""
    servers: list[TestServer] = []

    async def start(**overrides: Any) -> str:
        overrides.setdefault("port", 0)
        settings = Settings(_env_file=None, **overrides)  # type: ignore[call-arg]
        server = TestServer(create_app(settings), host="127.0.0.1", handler_cancellation=True)
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def gateway_url(make_gateway: MakeGateway) -> str:
    """Base URL of a gateway with default settings, e.g. ``http://127.0.0.1:41234``."""
    return await make_gateway()


class GatewayProcess:
    """``python -m gateway`` as a child process, as a user runs it."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "TOKENPIPE_LOG_FORMAT": "json", **(env or {})}
        # Logs go to a file, not a pipe: an unread pipe fills up and blocks the gateway.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--port", str(self.port), *args],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    def logs(self) -> str:
        """Everything the process wrote to stderr so far."""
        if self._log.closed:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}: {self.logs()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("gateway did not start")

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        logs = self.logs()
        self._log.close()
        return self.proc.returncode, logs


@pytest.fixture
def gateway_process() -> Iterator[Callable[..., GatewayProcess]]:
    """Start ``python -m gateway`` subprocesses; each is stopped at teardown."""
    started: list[GatewayProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> GatewayProcess:
        proc = GatewayProcess(*args, env=env)
        started.append(proc)
        proc.wait_ready()
        return proc

    yield start
    for proc in started:
        if not proc._log.closed:
            proc.stop()
