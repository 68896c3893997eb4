"""--workers N: one scrape (and one dashboard snapshot) covers every worker process.

Two real processes, spawned like the server's workers, record into one directory;
the parent renders it.
"""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from gateway.observability.live_stats import LiveStats
from gateway.observability.metrics import (
    MULTIPROC_ENV,
    cleanup_multiprocess_dir,
    mark_dead,
    prepare_multiprocess_dir,
)
from tests.gateway.observability import workers
from tests.gateway.observability.support import genai, labels, make_metrics, series

IN_FLIGHT = ("tokenpipe_streams_in_flight", labels())
DURATIONS = ("gen_ai_server_request_duration_seconds_count", genai("fake"))
OUTPUT = (
    "tokenpipe_tokens_total",
    labels(gen_ai_token_type="output", gen_ai_request_model="fake", key="team-a"),
)


def test_one_scrape_sums_every_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    path = prepare_multiprocess_dir()
    assert os.environ[MULTIPROC_ENV] == str(path)
    ctx = multiprocessing.get_context("spawn")
    release = ctx.Event()
    plan = [(3, 2, ctx.Event()), (4, 3, ctx.Event())]  # (replies, streams, ready)
    procs = [
        ctx.Process(target=workers.record, args=(replies, streams, ready, release))
        for replies, streams, ready in plan
    ]
    try:
        for proc in procs:
            proc.start()
        for _, _, ready in plan:
            assert ready.wait(60), "a worker did not start"

        got = series(make_metrics())
        assert got[DURATIONS] == 7
        assert got[OUTPUT] == 7 * 20
        assert got[("tokenpipe_stream_ends_total", labels(reason="stop"))] == 7
        assert (
            got[("tokenpipe_requests_total", labels(endpoint="/v1/chat/completions", status="200"))]
            == 2
        )
        assert got[IN_FLIGHT] == 5  # livesum: 2 + 3

        # The dashboard, a second later (only complete seconds count in its windows).
        live = LiveStats(["fake"], share_dir=path, clock=lambda: time.time() + 1.5, stale_after=30)
        snapshot = live.snapshot()
        assert snapshot["in_flight"] == 5
        assert snapshot["workers"] == 3  # two workers and this process
        assert snapshot["replies_60s"] == 7
        assert snapshot["models"][0]["replies"] == 7
        assert snapshot["ends_by_reason"] == {"stop": 7}
        assert snapshot["ttft_p50"] == pytest.approx(0.1, rel=0.02)
        assert sum(snapshot["series"]["in_flight"][-3:]) > 0

        release.set()
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0

        assert series(make_metrics())[IN_FLIGHT] == 5  # dead, but not yet marked so
        first, second = procs
        assert first.pid is not None
        assert second.pid is not None
        mark_dead(first.pid)
        assert series(make_metrics())[IN_FLIGHT] == 3
        mark_dead(second.pid)
        got = series(make_metrics())
        assert got.get(IN_FLIGHT, 0) == 0
        assert got[DURATIONS] == 7  # what dead workers counted still counts

        stale = LiveStats(["fake"], share_dir=path, clock=lambda: time.time() + 10, stale_after=3)
        snapshot = stale.snapshot()
        assert snapshot["in_flight"] == 0
        assert snapshot["workers"] == 1
        assert snapshot["replies_60s"] == 7
    finally:
        release.set()
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
        cleanup_multiprocess_dir(path)
    assert not path.exists()
    assert MULTIPROC_ENV not in os.environ
