"""Typos in the file or the environment are named, with the closest setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from config import Settings
from config.environment import unknown_env_warnings
from config.unknown_keys import UnknownKey, unknown_keys
from tests.config.conftest import RunCli


def errors_of(**values: object) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, **values)  # type: ignore[arg-type]
    return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in caught.value.errors()]


def test_top_level_typo() -> None:
    assert errors_of(max_stremas=3) == ["max_stremas: unknown setting; did you mean max_streams?"]


def test_typo_in_a_model_entry() -> None:
    # ModelConfig forbids extras itself: the pydantic line is replaced, not doubled.
    assert errors_of(models=[{"name": "a", "provider": "fake", "api_kye": "k"}]) == [
        "models.0.api_kye: unknown setting; did you mean api_key?"
    ]


def test_typo_in_nested_timeouts() -> None:
    models = [{"name": "a", "provider": "fake", "timeouts": {"frist_token": 5}}]
    assert errors_of(models=models) == [
        "models.0.timeouts.frist_token: unknown setting; did you mean first_token?"
    ]


def test_no_suggestion_when_nothing_is_close() -> None:
    assert errors_of(models=[{"name": "a", "provider": "fake", "colour": "red"}]) == [
        "models.0.colour: unknown setting"
    ]


def test_the_walk_follows_the_annotations() -> None:
    class Key(BaseModel):
        name: str = ""

    class Auth(BaseModel):
        keys: list[Key] = []
        by_team: dict[str, Key] = {}
        admin: Key | None = None
        pair: tuple[Key, Key] | None = None

    class Root(BaseModel):
        auth: Auth = Auth()

    data = {
        "auth": {
            "keys": [{"name": "a"}, {"nmae": "b"}],
            "by_team": {"red": {"nam": "c"}},
            "admin": {"names": "d"},
            "pair": [{}, {"x": 1}],
            "kyes": [],
        }
    }
    assert unknown_keys(Root, data) == [
        UnknownKey(("auth", "keys", 1, "nmae"), "name"),
        UnknownKey(("auth", "by_team", "red", "nam"), "name"),
        UnknownKey(("auth", "admin", "names"), "name"),
        UnknownKey(("auth", "pair", 1, "x"), None),
        UnknownKey(("auth", "kyes"), "keys"),
    ]


def test_free_form_options_are_not_checked() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        models=[{"name": "a", "provider": "fake", "options": {"anything": {"goes": 1}}}],
    )
    assert settings.models[0].options == {"anything": {"goes": 1}}


def test_environment_typo_is_a_warning(tmp_path: Path) -> None:
    env_file = tmp_path / "my.env"
    env_file.write_text("TOKENPIPE_MAX_STREMAS=3\nTOKENPIPE_PORT=9000\nUNRELATED=1\n")
    environ = {"TOKENPIPE_HEARTBEAT_SECONDZ": "5", "TOKENPIPE_PORT": "1", "HOME": "/root"}
    assert unknown_env_warnings(environ, env_file=env_file) == [
        "TOKENPIPE_HEARTBEAT_SECONDZ: unknown setting, ignored; "
        "did you mean TOKENPIPE_HEARTBEAT_SECONDS?",
        f"TOKENPIPE_MAX_STREMAS (in {env_file}): unknown setting, ignored; "
        "did you mean TOKENPIPE_MAX_STREAMS?",
    ]
    # The settings themselves still load: .env typos are not errors.
    assert Settings(_env_file=env_file).port == 9000  # type: ignore[call-arg]


def test_unrelated_prefixed_variable_has_no_suggestion() -> None:
    assert unknown_env_warnings({"TOKENPIPE_ZZZ": "1"}, env_file=None) == [
        "TOKENPIPE_ZZZ: unknown setting, ignored"
    ]


def test_check_config_passes_with_environment_typos_warning_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: RunCli
) -> None:
    (tmp_path / "ok.yaml").write_text("max_streams: 3\n")
    (tmp_path / ".env").write_text("TOKENPIPE_DRAIN_SECODS=1\n")
    monkeypatch.setenv("TOKENPIPE_MAX_STREMAS", "5")
    code, out, err = run_cli("--check-config", "ok.yaml")
    assert code == 0
    assert out == "ok.yaml: OK (2 models: fake, fake-fast)\n"
    assert err.splitlines() == [
        "tokenpipe: warning: TOKENPIPE_MAX_STREMAS: unknown setting, ignored; "
        "did you mean TOKENPIPE_MAX_STREAMS?",
        "tokenpipe: warning: TOKENPIPE_DRAIN_SECODS (in .env): unknown setting, ignored; "
        "did you mean TOKENPIPE_DRAIN_SECONDS?",
    ]
