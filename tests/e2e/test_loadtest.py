"""scripts/loadtest.py: its SSE parser and figures directly, and the whole script run as a
subprocess against a real gateway process (``python -m gateway``) on loopback.

The fake provider's knobs (``--extra-body '{"fake": {...}}'``) make the expected counts
exact, so the report is checked number for number; no assertion depends on speed.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.ports import free_port as _free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "loadtest.py"
# Generous bounds: the machine is small and noisy.
RUN_TIMEOUT_S = 120
GATEWAY_START_S = 30


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("loadtest", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve their module through sys.modules.
    sys.modules["loadtest"] = module
    spec.loader.exec_module(module)
    return module


loadtest = _load_script()


# --- the SSE parser ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"data: a\n\n"], [b"a"]),
        ([b"data: a\n\ndata: b\n\n"], [b"a", b"b"]),
        ([b"da", b"ta: a", b"\n", b"\n"], [b"a"]),
        ([b"data: a\r\n\r\n"], [b"a"]),
        ([b"data: a\r", b"\n\r", b"\n"], [b"a"]),
        ([b"data: a\r\rdata: b\r\r"], [b"a", b"b"]),
        ([b"data: a\r", b"\r"], [b"a"]),
        ([b": ping\n\ndata: a\n\n"], [b"a"]),
        ([b": ping\r\n\r\n"], []),
        ([b"data: a\ndata: b\n\n"], [b"a\nb"]),
        ([b"data:a\n\n"], [b"a"]),
        ([b"data:  a\n\n"], [b" a"]),
        ([b"data\n\n"], [b""]),
        ([b"event: x\nid: 1\nretry: 5\ndata: a\n\n"], [b"a"]),
        ([b"event: x\n\n"], []),
        ([b"data: a\n"], []),
        ([b"data: a"], []),
        ([b"\xef\xbb\xbfdata: a\n\n"], [b"a"]),
        ([b"\xef", b"\xbb", b"\xbfdata: a\n\n"], [b"a"]),
        (["data: é€😀\n\n".encode()[:8], "data: é€😀\n\n".encode()[8:]], ["é€😀".encode()]),
    ],
)
def test_sse_parser_table(chunks: list[bytes], expected: list[bytes]) -> None:
    parser = loadtest.SSEParser()
    assert [data for chunk in chunks for data in parser.feed(chunk)] == expected


_payloads = st.lists(
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20), min_size=1
)


@given(
    events=st.lists(st.one_of(_payloads, st.just(None)), max_size=8),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_sse_parser_any_split(
    events: list[list[str] | None], newline: str, cuts: list[int]
) -> None:
    """Any events (None = a comment), any line ending, cut anywhere: the same data."""
    text = "".join(
        f": ping{newline}{newline}"
        if lines is None
        else "".join(f"data: {line}{newline}" for line in lines) + newline
        for lines in events
    )
    raw = text.encode()
    points = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    parser = loadtest.SSEParser()
    got = [d for a, b in itertools.pairwise(points) for d in parser.feed(raw[a:b])]
    assert got == ["\n".join(lines).encode() for lines in events if lines is not None]


# --- figures and arguments --------------------------------------------------------------


def test_percentile_interpolates() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert loadtest.percentile(values, 0) == 1.0
    assert loadtest.percentile(values, 50) == 2.5
    assert loadtest.percentile(values, 100) == 4.0
    assert loadtest.distribution([])["p50"] is None


def test_load_is_split_between_workers() -> None:
    cfg = loadtest.parse_args(
        [
            *("--url", "u", "--model", "m", "--concurrency", "5"),
            *("--requests", "11", "--workers", "2", "--warmup", "3"),
        ]
    )
    shares = loadtest.split_load(cfg)
    assert [s.concurrency for s in shares] == [3, 2]
    assert [s.requests for s in shares] == [6, 5]
    assert [s.warmup_requests for s in shares] == [2, 1]


@pytest.mark.parametrize(
    ("args", "attribute", "expected"),
    [
        (["--warmup", "7"], "warmup_requests", 7),
        (["--warmup", "1.5s"], "warmup_seconds", 1.5),
        ([], "requests", 100),
        ([], "concurrency", 8),
        (["--rate", "3"], "concurrency", None),
        (["--url", "http://h/v1/chat/completions"], "endpoint", "http://h/v1/chat/completions"),
        (["--url", "http://h/v1/"], "endpoint", "http://h/v1/chat/completions"),
    ],
)
def test_arguments(args: list[str], attribute: str, expected: object) -> None:
    cfg = loadtest.parse_args(["--url", "http://h/v1", "--model", "m", *args])
    assert getattr(cfg, attribute) == expected


@pytest.mark.parametrize(
    "args",
    [
        ["--warmup", "x"],
        ["--warmup", "-1"],
        ["--rate", "2", "--concurrency", "2"],
        ["--concurrency", "1", "--workers", "2"],
        ["--extra-body", "[1]"],
        ["--requests", "0"],
    ],
)
def test_bad_arguments_are_refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        loadtest.parse_args(["--url", "http://h/v1", "--model", "m", *args])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


# --- the script against a real gateway --------------------------------------------------


def _wait_until_serving(proc: subprocess.Popen[bytes], base: str) -> bool:
    deadline = time.monotonic() + GATEWAY_START_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{base}/v1/models", timeout=2):
                return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    """A gateway process on a free loopback port; yields its /v1 base URL."""
    env = {**os.environ, "TOKENPIPE_LOG_LEVEL": "warning"}
    for _ in range(3):  # another process may grab the free port before the gateway does
        port = _free_port()
        command = [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        if _wait_until_serving(proc, base):
            break
        proc.kill()
        proc.wait()
    else:
        pytest.fail("the gateway did not start")
    yield f"{base}/v1"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


#: What ``./scripts/serve`` installs lacks the dev extra: no rich, no matplotlib.
HIDDEN = ("rich", "matplotlib")


def hide_report_libraries(directory: Path) -> dict[str, str]:
    """An environment whose Python (this one, and the workers it spawns) cannot import
    :data:`HIDDEN`, as if they were not installed."""
    for name in HIDDEN:
        package = directory / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(
            f"raise ModuleNotFoundError({f'No module named {name!r}'!r}, name={name!r})\n"
        )
    return {**os.environ, "PYTHONPATH": str(directory)}


def run(
    url: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], Any]:
    """Run the script to completion; return the process and its JSON report."""
    out = tmp_path / "report.json"
    command = [sys.executable, str(SCRIPT), "--url", url, "--model", "fake-fast"]
    proc = subprocess.run(
        [*command, "--json", str(out), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
        env=env,
    )
    report = json.loads(out.read_text()) if out.exists() else None
    return proc, report


def fake(**knobs: object) -> tuple[str, str]:
    """The ``--extra-body`` arguments shaping the fake provider."""
    return "--extra-body", json.dumps({"fake": knobs})


DISTRIBUTION = {"count", "min", "mean", "p50", "p90", "p99", "max"}
KEYS: dict[str, set[str] | None] = {
    "schema": None,
    "started_at": None,
    "config": None,
    "requests": {
        "measured",
        "ok",
        "failed",
        "warmup",
        "error_rate",
        "failed_by_reason",
        "stopped_early",
    },
    "ttft_ms": DISTRIBUTION,
    "itl_ms": DISTRIBUTION,
    "e2e_ms": DISTRIBUTION,
    "throughput": {
        "wall_s",
        "requests_per_s",
        "ok_requests_per_s",
        "output_tokens",
        "output_tokens_per_s",
        "stream_tokens_per_s_p50",
    },
    "correctness": {
        "streams",
        "done",
        "one_finish_reason",
        "usage_reported",
        "usage_matches",
        "correct",
        "all_correct",
    },
    "client_cpu": {
        "workers",
        "main_cpu_s",
        "total_cpu_s",
        "total_utilisation",
        "cpu_count",
        "saturated",
    },
    "timeline": {"bucket_s", "output_tokens_per_s"},
}


def assert_all_correct(report: Any, requests: int, tokens_each: int) -> None:
    assert report["requests"]["ok"] == requests
    assert report["requests"]["failed"] == 0
    assert report["requests"]["failed_by_reason"] == {}
    correctness = report["correctness"]
    assert correctness["streams"] == correctness["correct"] == requests
    assert correctness["done"] == correctness["usage_matches"] == requests
    assert correctness["all_correct"] is True
    assert report["throughput"]["output_tokens"] == requests * tokens_each


def test_closed_loop_counts_every_token(gateway: str, tmp_path: Path) -> None:
    proc, report = run(
        gateway, tmp_path, "--concurrency", "4", "--requests", "20", *fake(reply_tokens=40)
    )
    assert proc.returncode == 0, proc.stderr
    assert set(report) == set(KEYS)
    for key, fields in KEYS.items():
        assert fields is None or set(report[key]) == fields, key
    assert report["schema"] == "tokenpipe.loadtest/1"
    assert "api_key" not in report["config"]
    assert_all_correct(report, requests=20, tokens_each=40)
    assert report["ttft_ms"]["count"] == 20
    assert report["ttft_ms"]["min"] > 0
    assert report["e2e_ms"]["min"] >= report["ttft_ms"]["min"]
    assert report["itl_ms"]["count"] == 20 * 39
    assert report["throughput"]["output_tokens_per_s"] > 0
    assert sum(report["timeline"]["output_tokens_per_s"]) * report["timeline"]["bucket_s"] == (
        pytest.approx(800)
    )
    assert [w["worker"] for w in report["client_cpu"]["workers"]] == [0]
    assert "time to first token" in proc.stdout
    assert "\x1b" not in proc.stdout + proc.stderr  # no progress bar or colours without a TTY


def test_max_tokens_caps_the_output(gateway: str, tmp_path: Path) -> None:
    proc, report = run(
        gateway,
        tmp_path,
        *("--concurrency", "3", "--requests", "9", "--max-tokens", "7"),
        *fake(reply_tokens=40),
    )
    assert proc.returncode == 0, proc.stderr
    assert_all_correct(report, requests=9, tokens_each=7)


@pytest.mark.parametrize(("max_error_rate", "exit_code"), [("0", 1), ("1", 0)])
def test_in_band_error_is_a_failure(
    gateway: str, tmp_path: Path, max_error_rate: str, exit_code: int
) -> None:
    proc, report = run(
        gateway,
        tmp_path,
        *("--concurrency", "2", "--requests", "6", "--max-error-rate", max_error_rate),
        *fake(reply_tokens=40, fail_after=5),
    )
    assert proc.returncode == exit_code, proc.stderr
    assert report["requests"]["ok"] == 0
    assert report["requests"]["failed_by_reason"] == {"in_band_error": 6}
    assert report["requests"]["error_rate"] == 1.0
    assert report["throughput"]["output_tokens"] == 6 * 5
    if exit_code:
        assert "exceeds --max-error-rate" in proc.stderr


def test_error_before_streaming_is_an_http_failure(gateway: str, tmp_path: Path) -> None:
    proc, report = run(
        gateway, tmp_path, "--concurrency", "2", "--requests", "4", *fake(fail_after=0)
    )
    assert proc.returncode == 1
    assert report["requests"]["failed_by_reason"] == {"http_502": 4}


def test_a_stalled_stream_times_out(gateway: str, tmp_path: Path) -> None:
    proc, report = run(
        gateway,
        tmp_path,
        *("--concurrency", "2", "--requests", "2", "--timeout", "1"),
        *fake(reply_tokens=40, stall_after=3),
    )
    assert proc.returncode == 1
    assert report["requests"]["failed_by_reason"] == {"timeout": 2}
    assert report["throughput"]["output_tokens"] == 2 * 3


def test_no_server_is_a_connection_failure(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"
    proc, report = run(url, tmp_path, "--concurrency", "1", "--requests", "2")
    assert proc.returncode == 1
    assert report["requests"]["failed_by_reason"] == {"connection": 2}


def test_open_loop_with_warmup(gateway: str, tmp_path: Path) -> None:
    proc, report = run(
        gateway,
        tmp_path,
        *("--rate", "20", "--requests", "10", "--warmup", "3", "--seed", "1"),
        *fake(reply_tokens=10),
    )
    assert proc.returncode == 0, proc.stderr
    assert report["config"]["rate"] == 20
    assert report["requests"]["measured"] == 10
    assert report["requests"]["warmup"] == 3
    assert_all_correct(report, requests=10, tokens_each=10)


def test_workers_merge_their_results_and_plot(gateway: str, tmp_path: Path) -> None:
    plot = tmp_path / "run.png"
    proc, report = run(
        gateway,
        tmp_path,
        *("--concurrency", "4", "--requests", "20", "--workers", "2", "--plot", str(plot)),
        *fake(reply_tokens=40),
    )
    assert proc.returncode == 0, proc.stderr
    assert_all_correct(report, requests=20, tokens_each=40)
    assert [w["worker"] for w in report["client_cpu"]["workers"]] == [0, 1]
    assert all(w["cpu_s"] > 0 for w in report["client_cpu"]["workers"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_duration_bounds_the_run(gateway: str, tmp_path: Path) -> None:
    proc, report = run(
        gateway,
        tmp_path,
        *("--concurrency", "2", "--duration", "1", "--requests", "100000"),
        *fake(reply_tokens=5, tokens_per_second=50),
    )
    assert proc.returncode == 0, proc.stderr
    assert 0 < report["requests"]["measured"] < 100000
    assert report["requests"]["failed"] == 0


def test_runs_without_rich_and_matplotlib(gateway: str, tmp_path: Path) -> None:
    """After ``./scripts/serve`` alone (no dev extra), stdout not a terminal: a plain-text
    report, the JSON, and one clear line for the plot that cannot be drawn."""
    env = hide_report_libraries(tmp_path / "hidden")
    check = subprocess.run(
        [sys.executable, "-c", "import rich"], env=env, capture_output=True, check=False
    )
    assert b"No module named 'rich'" in check.stderr  # the hiding works
    plot = tmp_path / "run.png"
    proc, report = run(
        gateway,
        tmp_path,
        *("--concurrency", "2", "--requests", "6", "--workers", "2", "--plot", str(plot)),
        *fake(reply_tokens=10),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert_all_correct(report, requests=6, tokens_each=10)
    assert "time to first token" in proc.stdout
    assert "correctness" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("needs matplotlib") == 1, proc.stderr
    assert not plot.exists()


def test_url_without_v1_stops_early_and_says_what_was_meant(gateway: str, tmp_path: Path) -> None:
    bare = gateway.removesuffix("/v1")
    proc, report = run(bare, tmp_path, "--concurrency", "4", "--requests", "1000")
    assert proc.returncode == 1
    assert f"did you mean {bare}/v1?" in proc.stderr
    assert "Traceback" not in proc.stderr
    stopped = report["requests"]["stopped_early"]
    assert stopped["reason"] == "http_404"
    assert stopped["hint"] == f"did you mean {bare}/v1?"
    assert set(report["requests"]["failed_by_reason"]) == {"http_404"}
    assert 20 <= report["requests"]["measured"] < 30
