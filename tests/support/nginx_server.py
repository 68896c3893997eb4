"""A real nginx for tests: rendered config, foreground child process, all files in a tmp dir."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

NGINX = Path("/usr/sbin/nginx")

_MAIN = """\
{user}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;

events {{
    worker_connections 256;
}}

http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

{http}
}}
"""


def nginx_binary() -> Path:
    """The nginx binary; skips the test when absent, except under ``CI=true``."""
    if NGINX.exists():
        return NGINX
    if os.environ.get("CI") == "true":
        pytest.fail(f"{NGINX} is missing; ./scripts/test installs Debian's nginx package")
    pytest.skip(f"{NGINX} is not installed (apt-get install nginx)")


class Nginx:
    """nginx in the foreground, with ``http_block`` inside a minimal main config.

    ``http_block`` is what would sit in ``http { }`` (server blocks, upstreams, maps);
    the wrapper puts pid, logs and temp files under ``prefix``.
    """

    def __init__(self, prefix: Path, http_block: str) -> None:
        self.prefix = prefix
        prefix.mkdir(parents=True, exist_ok=True)
        # As root, workers would switch to "nobody" and could not use the tmp dirs.
        user = "user root;" if os.geteuid() == 0 else ""
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(_MAIN.format(user=user, prefix=prefix, http=http_block))
        self.proc: subprocess.Popen[bytes] | None = None

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_log(self, name: str, text: str, timeout: float = 10.0) -> str:
        """The log file ``name`` once it contains ``text`` (nginx logs after the response)."""
        path = self.prefix / name
        deadline = time.monotonic() + timeout
        while True:
            content = path.read_text(errors="replace") if path.exists() else ""
            if text in content or time.monotonic() > deadline:
                return content
            time.sleep(0.05)

    def start(self, port: int, timeout: float = 15.0) -> None:
        """Start and wait until ``port`` accepts connections."""
        binary = nginx_binary()
        base = [str(binary), "-p", str(self.prefix), "-e", str(self.prefix / "error.log")]
        check = subprocess.run(
            [*base, "-t", "-c", str(self.conf)], capture_output=True, timeout=timeout
        )
        assert check.returncode == 0, check.stderr.decode(errors="replace")
        self.proc = subprocess.Popen(
            [*base, "-c", str(self.conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited {self.proc.returncode}: {self.error_log()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nginx did not listen on {port}: {self.error_log()}")

    def stop(self) -> None:
        """Fast shutdown (SIGTERM to the master, which ends its workers)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
