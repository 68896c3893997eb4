"""compose.yaml's structure (no Docker engine runs in the suite): parsed with PyYAML and
checked against what its parts expect of each other. tests/e2e/test_scale_out.py runs
the same topology for real on loopback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.support.gateway import ROOT


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert set(compose) == {"services"}
    services: dict[str, Any] = compose["services"]
    assert set(services) == {"nginx", "tokenpipe", "redis"}
    return services


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to the repository) of bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        host, container, *_ = volume.split(":")
        assert (ROOT / host).is_file(), f"{host} is mounted but missing"
        out[container] = host
    return out


def test_nginx_publishes_the_port_and_balances_the_replicas(services: dict[str, Any]) -> None:
    nginx = services["nginx"]
    assert nginx["image"].startswith("nginx:")
    assert nginx["ports"] == ["8080:80"]
    conf = mounts(nginx)["/etc/nginx/conf.d/default.conf"]
    assert conf == "./config/nginx-compose.conf"
    text = (ROOT / conf).read_text()
    assert re.search(r"^\s*server tokenpipe:8080 ", text, re.M)  # the service name and port
    assert re.search(r"^\s*listen 80;", text, re.M)
    for setting in ("proxy_buffering off;", "proxy_next_upstream error timeout;", "gzip off;"):
        assert setting in text
    assert nginx["depends_on"] == {"tokenpipe": {"condition": "service_healthy"}}
    assert "/healthz" in " ".join(nginx["healthcheck"]["test"])


def test_replicas_scale_and_share_redis(services: dict[str, Any]) -> None:
    tokenpipe = services["tokenpipe"]
    assert tokenpipe["build"] == "."
    # --scale needs no fixed host port and no fixed container name.
    assert "ports" not in tokenpipe
    assert "container_name" not in tokenpipe
    assert tokenpipe["expose"] == ["8080"]
    command = tokenpipe["command"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == "8080"
    config = command[command.index("--config") + 1]
    assert mounts(tokenpipe)[config] == "./config/tokenpipe-compose.yaml"
    env = tokenpipe["environment"]
    assert env["TOKENPIPE_REDIS_URL"] == "redis://redis:6379/0"
    assert tokenpipe["depends_on"] == {"redis": {"condition": "service_healthy"}}
    check = " ".join(tokenpipe["healthcheck"]["test"])
    assert "http://127.0.0.1:8080/healthz" in check
    assert "EXPOSE 8080" in (ROOT / "Dockerfile").read_text()


def test_redis_is_healthchecked(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:")
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_the_replicas_config_is_valid_with_the_compose_environment(
    services: dict[str, Any],
) -> None:
    """Every ${VAR} of the mounted config is given by compose.yaml, and tokenpipe accepts
    the file with that environment (compose's own ${...} filled in with test values)."""
    env = services["tokenpipe"]["environment"]
    config = ROOT / "config" / "tokenpipe-compose.yaml"
    wanted = set(re.findall(r"\$\{(\w+)", config.read_text()))
    assert wanted <= set(env), wanted - set(env)
    filled = {
        name: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value)).replace("${", "unused-")
        for name, value in env.items()
    }
    filled["CLIENT_API_KEY"] = "sk-compose-client-0123456789"
    filled["ADMIN_API_KEY"] = "sk-compose-admin-0123456789"
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "--check-config", str(config)],
        cwd=ROOT,
        env={**os.environ, **filled},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "unknown setting" not in proc.stderr
