"""``tokenpipe --print-config``: each effective setting and the source that supplied it."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from config.provenance import EffectiveSetting, effective_settings
from tests.config.conftest import RunCli


@pytest.fixture
def sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """port from a flag, max_streams from env, heartbeat from .env, drain from the file."""
    (tmp_path / "c.yaml").write_text(
        "port: 9001\nheartbeat_seconds: 5\nmax_streams: 7\ndrain_seconds: 4\n"
        "models:\n  - {name: up, provider: openai, api_key: '${TP_TEST_KEY}'}\n"
    )
    (tmp_path / ".env").write_text("TOKENPIPE_HEARTBEAT_SECONDS=6\nTOKENPIPE_CONFIG=c.yaml\n")
    monkeypatch.setenv("TOKENPIPE_MAX_STREAMS", "8")
    monkeypatch.setenv("TP_TEST_KEY", "sk-supersecret")


@pytest.mark.usefixtures("sources")
def test_each_source_named() -> None:
    found = {e.name: e for e in effective_settings({"port": 9002})}
    assert found["port"] == EffectiveSetting("port", 9002, "flag")
    assert found["max_streams"] == EffectiveSetting(
        "max_streams", 8, "env", "TOKENPIPE_MAX_STREAMS"
    )
    assert found["heartbeat_seconds"] == EffectiveSetting("heartbeat_seconds", 6.0, ".env")
    assert found["config"] == EffectiveSetting("config", "c.yaml", ".env")
    assert found["drain_seconds"] == EffectiveSetting("drain_seconds", 4.0, "file", "c.yaml")
    assert found["host"] == EffectiveSetting("host", "127.0.0.1", "default")
    assert found["models"].value[0]["api_key"] == "***"


@pytest.mark.usefixtures("sources")
def test_text_output(run_cli: RunCli) -> None:
    code, out, err = run_cli("--print-config", "--port", "9002")
    assert (code, err) == (0, "")
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["setting", "value", "source"]
    assert ["port", "9002", "flag"] in rows
    assert ["max_streams", "8", "env", "(TOKENPIPE_MAX_STREAMS)"] in rows
    assert ["heartbeat_seconds", "6.0", ".env"] in rows
    assert ["drain_seconds", "4.0", "file", "(c.yaml)"] in rows
    assert ["send_timeout_seconds", "30.0", "default"] in rows
    assert ["models.0.api_key", "***", "file", "(c.yaml)"] in rows
    assert ["models.0.timeouts.idle", "60.0", "file", "(c.yaml)"] in rows
    # Aligned: every row's value starts in the same column.
    assert len({line.index(row[1]) for line, row in zip(out.splitlines(), rows, strict=True)}) == 1
    assert "sk-supersecret" not in out


@pytest.mark.usefixtures("sources")
def test_json_output(run_cli: RunCli) -> None:
    code, out, _ = run_cli("--print-config", "--json", "--config", "c.yaml")
    assert code == 0
    found = {e["name"]: e for e in orjson.loads(out)}
    assert found["config"] == {
        "name": "config",
        "value": "c.yaml",
        "source": "flag",
        "detail": None,
    }
    assert found["max_streams"]["detail"] == "TOKENPIPE_MAX_STREAMS"
    assert found["models"]["value"][0]["api_key"] == "***"
    assert "sk-supersecret" not in out


def test_invalid_configuration_is_refused_as_at_start_up(tmp_path: Path, run_cli: RunCli) -> None:
    (tmp_path / "c.yaml").write_text("max_stremas: 3\n")
    code, out, err = run_cli("--print-config", "--config", "c.yaml")
    assert (code, out) == (2, "")
    assert "  max_stremas: unknown setting; did you mean max_streams?" in err.splitlines()
