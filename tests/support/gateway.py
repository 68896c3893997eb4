"""The gateway as a child process (``python -m gateway``), as a user runs it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parent.parent.parent

#: ``url = await make_gateway(**settings)``: the conftest fixture's type.
MakeGateway = Callable[..., Awaitable[str]]


class GatewayProcess:
    """``python -m gateway`` as a child process, as a user runs it."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
        port_in_config: int | None = None,
    ) -> None:
        # ``port``: restart a gateway where a page or client expects it;
        # ``port_in_config``: the port the config file sets (no ``--port`` flag then).
        self.port = port_in_config or (port if port is not None else free_port())
        self.url = f"http://127.0.0.1:{self.port}"
        port_flag = [] if port_in_config else ["--port", str(self.port)]
        full_env = {**os.environ, "TOKENPIPE_LOG_FORMAT": "json", **(env or {})}
        # Logs go to a file, not a pipe: an unread pipe fills up and blocks the gateway.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        #: Processes serving (``--workers N``): ready once each of them listens.
        self.workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", *port_flag, *args],
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

    def log_events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log events written so far (``name``: only those), whole lines only:
        the process may be writing the last one as it is read."""
        found: list[dict[str, Any]] = []
        for line in self.logs().split("\n")[:-1]:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a traceback line, or anything else not JSON
            if isinstance(entry, dict) and (name is None or entry.get("event") == name):
                found.append(entry)
        return found

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}: {self.logs()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            # With workers, the first one listening is not all of them: until the last
            # one is, the kernel gives it no connections.
            if self.workers == 1 or len(self.log_events("gateway_listening")) >= self.workers:
                return
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
