"""A real model upstream: llama-cpp-python's OpenAI-compatible server with SmolLM2-135M.

``./scripts/realmodel-env`` builds ``.venv-realmodel`` and records the GGUF's path
in ``.venv-realmodel/model-path``; ``./scripts/test`` runs it first and exports
``TOKENPIPE_REALMODEL_SKIP`` with the reason when it could not. Without the
environment every test here is skipped with one reason, never silently.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, free_port

VENV = Path(os.environ.get("TOKENPIPE_REALMODEL_VENV", ROOT / ".venv-realmodel"))
#: The name the server answers to; requests may send it as ``model``.
MODEL_ALIAS = "smollm2"
START_TIMEOUT = 60.0


class LlamaServer:
    """``python -m llama_cpp.server`` on a loopback port, logging to a file."""

    def __init__(self, python: Path, model: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        # One generation thread keeps the CPU measurements readable on a shared
        # 2-core machine; prompt processing may use both.
        self.proc = subprocess.Popen(
            [
                str(python),
                "-m",
                "llama_cpp.server",
                "--model",
                str(model),
                "--model_alias",
                MODEL_ALIAS,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--n_ctx",
                "2048",
                "--n_threads",
                "1",
                "--n_threads_batch",
                "2",
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.process = psutil.Process(self.proc.pid)

    def logs(self) -> str:
        """Everything the server wrote so far."""
        if self._log.closed:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server has used, all threads."""
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama server exited {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise TimeoutError(f"llama server did not answer in {timeout:g} s:\n{self.logs()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def unavailable_reason() -> str | None:
    """Why the real-model environment cannot be used, or None when it can."""
    if reason := os.environ.get("TOKENPIPE_REALMODEL_SKIP"):
        return f"real model unavailable: {reason}"
    python = VENV / "bin" / "python"
    model_path = VENV / "model-path"
    if not python.exists() or not model_path.exists():
        return f"real model unavailable: no {VENV} (run ./scripts/realmodel-env)"
    model = Path(model_path.read_text().strip())
    if not model.is_file():
        return f"real model unavailable: {model} is missing (run ./scripts/realmodel-env)"
    return None


@pytest.fixture(scope="session")
def llama() -> Iterator[LlamaServer]:
    """The llama server, shared by the session (it loads the model once)."""
    if reason := unavailable_reason():
        pytest.skip(reason)
    model = Path((VENV / "model-path").read_text().strip())
    server = LlamaServer(VENV / "bin" / "python", model)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
