"""Config tests run ``gateway.cli.main`` in-process, in a directory of their own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.cli import main


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No stray .env and no TOKENPIPE_* variable from the caller's environment."""
    monkeypatch.chdir(tmp_path)
    import os

    for name in list(os.environ):
        if name.upper().startswith("TOKENPIPE_"):
            monkeypatch.delenv(name)


RunCli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> RunCli:
    """``code, out, err = run_cli("--check-config", "f.yaml")``, in-process."""

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            main(list(argv))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run
