"""The command line and settings sources, as a user runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from config import Settings
from tests.support.gateway import ROOT, GatewayProcess


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return orjson.loads(resp.read())


def test_python_m_gateway_serves_models(gateway_process: Callable[..., GatewayProcess]) -> None:
    proc = gateway_process()
    models = get_json(f"{proc.url}/v1/models")
    assert [m["id"] for m in models["data"]] == ["fake", "fake-fast"]  # type: ignore[index]
    code, err = proc.stop()
    assert code == 0
    lines = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(line["event"] == "gateway_ready" for line in lines)


def test_console_command_installed() -> None:
    exe = shutil.which("tokenpipe", path=str(Path(sys.executable).parent))
    assert exe is not None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("tokenpipe ")


def test_yaml_env_and_flag_precedence(
    tmp_path: Path, gateway_process: Callable[..., GatewayProcess]
) -> None:
    config = tmp_path / "tokenpipe.yaml"
    config.write_text(
        "heartbeat_seconds: 3\n"
        "models:\n"
        "  - name: house\n"
        "    provider: fake\n"
        "    options: {tokens_per_second: 0}\n"
        "aliases:\n"
        "  gpt-4: house\n"
    )
    proc = gateway_process(
        "--config", str(config), env={"TOKENPIPE_PORT": "1", "TOKENPIPE_LOG_LEVEL": "warning"}
    )  # the --port flag (added by the fixture) wins over TOKENPIPE_PORT
    models = get_json(f"{proc.url}/v1/models")
    assert [m["id"] for m in models["data"]] == ["house", "fake", "fake-fast", "gpt-4"]  # type: ignore[index]
    _, err = proc.stop()
    assert "gateway_ready" not in err  # TOKENPIPE_LOG_LEVEL=warning took effect


def test_settings_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "c.yaml").write_text("port: 9001\nheartbeat_seconds: 5\nmax_streams: 7\n")
    (tmp_path / ".env").write_text("TOKENPIPE_HEARTBEAT_SECONDS=6\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKENPIPE_CONFIG", str(tmp_path / "c.yaml"))
    monkeypatch.setenv("TOKENPIPE_MAX_STREAMS", "8")
    settings = Settings(port=9002)
    assert settings.port == 9002  # flags (init) over everything
    assert settings.max_streams == 8  # environment over the file
    assert settings.heartbeat_seconds == 6  # .env over the file
    assert settings.host == "127.0.0.1"


def test_defaults() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.max_body_bytes <= 32 * 1024 * 1024


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("models: [{name: a, provider: nosuch}]", "models.0.provider"),
        ("models: [{name: a, provider: fake, timeouts: {idle: -1}}]", "models.0.timeouts.idle"),
        ("models: [{name: a, provider: fake, fallbacks: [ghost]}]", "unknown model 'ghost'"),
        ("aliases: {x: ghost}", "aliases.x: unknown model 'ghost'"),
        ("models: [{name: a, provider: fake, colour: red}]", "models.0.colour"),
        (
            "models: [{name: a, provider: fake, api_key: '${TP_TEST_UNSET_VAR}'}]",
            "TP_TEST_UNSET_VAR",
        ),
        ("models: [", "not valid YAML"),
        ("max_streams: lots", "max_streams"),
    ],
)
def test_bad_config_stops_start_up_naming_the_key(
    tmp_path: Path, yaml_text: str, message: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    checked = run_cli("--check-config", str(config))
    assert checked.returncode == 2
    assert message in checked.stderr
    started = run_cli("--config", str(config), "--port", "0")
    assert started.returncode == 2
    assert message in started.stderr
    assert "Traceback" not in started.stderr


def test_check_config_ok_and_secret_never_printed(tmp_path: Path) -> None:
    config = tmp_path / "ok.yaml"
    config.write_text(
        "models:\n  - name: up\n    provider: openai\n    base_url: http://127.0.0.1:9/v1\n"
        "    api_key: ${TP_TEST_KEY}\n"
    )
    checked = run_cli("--check-config", str(config), env={"TP_TEST_KEY": "sk-supersecret"})
    assert checked.returncode == 0, checked.stderr
    assert "OK" in checked.stdout
    assert "up" in checked.stdout
    assert "sk-supersecret" not in checked.stdout + checked.stderr


def test_open_files_soft_limit_raised_to_hard() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("hard limit too low to observe")
    low = 256

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    from tests.support.ports import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lower,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                get_json(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                time.sleep(0.1)
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
    assert int(line.split()[3]) > low


def test_typo_in_the_file_stops_start_up(tmp_path: Path) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text("max_stremas: 3\nmodels: [{name: a, provider: fake, retires: 1}]\n")
    started = run_cli("--config", str(config), "--port", "0")
    assert started.returncode == 2
    assert started.stderr.splitlines() == [
        "tokenpipe: invalid configuration:",
        "  max_stremas: unknown setting; did you mean max_streams?",
        "  models.0.retires: unknown setting; did you mean retries?",
    ]


def test_environment_typo_warned_at_start_up(
    gateway_process: Callable[..., GatewayProcess],
) -> None:
    proc = gateway_process(env={"TOKENPIPE_HEARTBEAT_SECONDZ": "5"})
    get_json(f"{proc.url}/healthz")  # still starts: a warning, not an error
    code, err = proc.stop()
    assert code == 0
    assert (
        "tokenpipe: warning: TOKENPIPE_HEARTBEAT_SECONDZ: unknown setting, ignored; "
        "did you mean TOKENPIPE_HEARTBEAT_SECONDS?"
    ) in err.splitlines()
