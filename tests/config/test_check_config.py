"""``tokenpipe --check-config``: every problem the gateway would refuse, one line each."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.config.conftest import RunCli

INVALID = "tokenpipe: invalid configuration:"
UNREADABLE = "tokenpipe: configuration error:"


@pytest.mark.parametrize(
    ("yaml_text", "expected_stderr"),
    [
        pytest.param(
            "max_stremas: 3\n",
            [INVALID, "  max_stremas: unknown setting; did you mean max_streams?"],
            id="unknown-key",
        ),
        pytest.param(
            "max_streams: lots\n",
            [
                INVALID,
                "  max_streams: Input should be a valid integer, "
                "unable to parse string as an integer",
            ],
            id="bad-type",
        ),
        pytest.param(
            "models: [{name: a, provider: fake, fallbacks: [ghost]}]\n",
            [INVALID, "  models.0.fallbacks.0: unknown model 'ghost' (known: a, fake, fake-fast)"],
            id="fallback-to-unknown-model",
        ),
        pytest.param(
            "aliases: {x: ghost}\n",
            [INVALID, "  aliases.x: unknown model 'ghost' (known: fake, fake-fast)"],
            id="alias-to-unknown-model",
        ),
        pytest.param(
            "models: [{name: a, provider: fake}, {name: a, provider: fake}]\n",
            [INVALID, "  models.1.name: duplicate model name 'a' (also models.0)"],
            id="duplicate-model",
        ),
        pytest.param(
            'models: [{name: a, provider: openai, base_url: "http://x/v1",'
            ' api_key: "sk-line-break-4a\\n"}]\n',
            [
                INVALID,
                "  models.0.api_key: Value error, api_key has a line break in it "
                "(a secret read with its newline?)",
            ],
            id="api-key-with-a-line-break",
        ),
        pytest.param(
            "models: [\n",
            [
                UNREADABLE,
                "  bad.yaml is not valid YAML: line 2, column 1: "
                "expected the node content, but found '<stream end>'",
            ],
            id="invalid-yaml",
        ),
        pytest.param(
            "models: [{name: a, provider: fake, upstream_model: '${TP_UNSET_1}'}]\n"
            "host: ${TP_UNSET_2}\n",
            [
                UNREADABLE,
                "  models.0.upstream_model: environment variable TP_UNSET_1 is not set",
                "  host: environment variable TP_UNSET_2 is not set",
            ],
            id="unresolved-variables",
        ),
    ],
)
def test_broken_file(
    tmp_path: Path, run_cli: RunCli, yaml_text: str, expected_stderr: list[str]
) -> None:
    (tmp_path / "bad.yaml").write_text(yaml_text)
    code, out, err = run_cli("--check-config", "bad.yaml")
    assert (code, out, err.splitlines()) == (2, "", expected_stderr)


def test_every_problem_is_reported_together(tmp_path: Path, run_cli: RunCli) -> None:
    (tmp_path / "bad.yaml").write_text(
        "max_stremas: 3\n"
        "heartbeat_seconds: -1\n"
        "workers: many\n"
        "models:\n"
        "  - {name: a, provider: fake, fallbacks: [ghost, a]}\n"
        "  - {name: a, provider: fake}\n"
        "aliases: {x: nowhere, fake: a}\n"
    )
    code, _, err = run_cli("--check-config", "bad.yaml")
    assert code == 2
    assert err.splitlines() == [
        INVALID,
        "  max_stremas: unknown setting; did you mean max_streams?",
        "  workers: Input should be a valid integer, unable to parse string as an integer",
        "  heartbeat_seconds: Input should be greater than 0",
        "  models.1.name: duplicate model name 'a' (also models.0)",
        "  models.0.fallbacks.0: unknown model 'ghost' (known: a, fake, fake-fast)",
        "  models.0.fallbacks.1: 'a' falls back to itself",
        "  aliases.x: unknown model 'nowhere' (known: a, fake, fake-fast)",
        "  aliases.fake: the name is already a model",
    ]


def test_environment_values_are_checked_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: RunCli
) -> None:
    (tmp_path / "ok.yaml").write_text("models: [{name: a, provider: fake}]\n")
    monkeypatch.setenv("TOKENPIPE_MAX_STREAMS", "-1")
    code, _, err = run_cli("--check-config", "ok.yaml")
    assert code == 2
    assert "  max_streams: Input should be greater than or equal to 0" in err.splitlines()


def test_no_secret_in_any_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: RunCli
) -> None:
    secret = "sk-live-do-not-print"
    monkeypatch.setenv("TP_TEST_SECRET", secret)
    (tmp_path / "bad.yaml").write_text(
        "models:\n"
        "  - name: a\n"
        "    provider: openai\n"
        "    api_key: ${TP_TEST_SECRET}\n"
        "    api_kye: ${TP_TEST_SECRET}\n"  # a typo beside the key, holding the secret
        "    retries: ${TP_TEST_SECRET}\n"  # the secret in a field of the wrong type
        "    upstream_model: ['${TP_TEST_SECRET}']\n"
        "  - name: b\n"
        "    provider: ${TP_TEST_SECRET}\n"  # quoted by a literal_error's input, if shown
        f"    base_url: {secret}\n"
    )
    code, out, err = run_cli("--check-config", "bad.yaml")
    assert code == 2
    assert err.splitlines() == [
        INVALID,
        "  models.0.api_kye: unknown setting; did you mean api_key?",
        "  models.0.upstream_model: Input should be a valid string",
        "  models.0.retries: Input should be a valid integer, unable to parse string as an integer",
        "  models.1.provider: Input should be 'openai', 'anthropic' or 'fake'",
    ]
    assert secret not in out + err


def test_a_valid_file(tmp_path: Path, run_cli: RunCli) -> None:
    (tmp_path / "ok.yaml").write_text(
        "models: [{name: a, provider: fake, fallbacks: [g]}, {name: b, provider: fake}]\n"
        "aliases: {g: b}\n"
    )
    assert run_cli("--check-config", "ok.yaml") == (
        0,
        "ok.yaml: OK (5 models: a, b, fake, fake-fast, g)\n",
        "",
    )


def test_the_example_file_is_valid(run_cli: RunCli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "x")
    example = Path(__file__).parents[2] / "config" / "tokenpipe.example.yaml"
    code, _, err = run_cli("--check-config", str(example))
    assert (code, err) == (0, "")
