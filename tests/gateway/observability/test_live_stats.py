"""LiveStats: per-second windows, rates, percentiles, the per-model table, bounds."""

from __future__ import annotations

import random

import pytest

from gateway.observability.live_stats import RECENT_SECONDS, WINDOW_SECONDS, LiveStats, percentile
from tests.gateway.observability.support import Facts

T0 = 1_700_000_000.0


class Clock:
    """A settable wall clock."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def live(clock: Clock) -> LiveStats:
    return LiveStats(["fake", "gpt-4o"], clock=clock)


def test_rates_over_the_last_second_and_minute(live: LiveStats, clock: Clock) -> None:
    clock.now = T0 + 0.2
    live.record_reply(Facts(completion_tokens=30))
    live.record_request()
    clock.now = T0 + 1.4
    live.record_reply(Facts(completion_tokens=90))
    live.record_request()
    live.record_request()
    # Only complete seconds count: the one still running is left out.
    assert live.snapshot()["tokens_per_s_1s"] == 30
    clock.now = T0 + 2.0
    snap = live.snapshot()
    assert snap["tokens_per_s_1s"] == 90
    assert snap["requests_per_s_1s"] == 2
    assert snap["tokens_per_s_60s"] == pytest.approx(120 / RECENT_SECONDS)
    assert snap["requests_per_s_60s"] == pytest.approx(3 / RECENT_SECONDS)
    assert snap["replies_60s"] == 2
    assert snap["series"]["tokens_per_s"][-2:] == [30, 90]
    assert len(snap["series"]["tokens_per_s"]) == WINDOW_SECONDS

    clock.now = T0 + 61.0  # the first second has left the minute
    snap = live.snapshot()
    assert snap["tokens_per_s_1s"] == 0
    assert snap["tokens_per_s_60s"] == pytest.approx(90 / RECENT_SECONDS)
    assert sum(snap["series"]["tokens_per_s"]) == 120  # still on the chart

    clock.now = T0 + WINDOW_SECONDS + 2.0  # and now off the chart
    snap = live.snapshot()
    assert sum(snap["series"]["tokens_per_s"]) == 0
    assert snap["models"] == []


def test_percentiles_within_two_percent(live: LiveStats, clock: Clock) -> None:
    ttfts = [i / 100 for i in range(1, 101)]  # 10 ms ... 1 s
    random.Random(3).shuffle(ttfts)
    for ttft in ttfts:
        # 1 s after the first token, 11 tokens: 0.1 s per token after the first.
        live.record_reply(Facts(ttft=ttft, duration=ttft + 1.0, completion_tokens=11))
    clock.now += 1
    snap = live.snapshot()
    assert snap["ttft_p50"] == pytest.approx(0.50, rel=0.02)
    assert snap["ttft_p99"] == pytest.approx(0.99, rel=0.02)
    assert snap["tpot_p50"] == pytest.approx(0.1, rel=0.02)
    assert snap["series"]["ttft_p50"][-1] == pytest.approx(0.50, rel=0.02)
    assert snap["series"]["ttft_p50"][-2] is None


def test_percentile_of_nothing_is_none() -> None:
    assert percentile({}, 0.5) is None


def test_in_flight_now_and_over_time(live: LiveStats, clock: Clock) -> None:
    for _ in range(3):
        live.stream_started()
    clock.now += 10
    live.stream_ended()
    clock.now += 10
    snap = live.snapshot()
    assert snap["in_flight"] == 2
    assert snap["series"]["in_flight"][-20:] == [3] * 10 + [2] * 10
    assert snap["series"]["in_flight"][-21] == 0

    # Long after the last change the value is carried, not forgotten.
    clock.now += WINDOW_SECONDS * 3
    snap = live.snapshot()
    assert snap["series"]["in_flight"] == [2] * WINDOW_SECONDS


def test_errors_ends_and_the_model_table(live: LiveStats, clock: Clock) -> None:
    live.record_reply(Facts(model="fake", ttft=0.2))
    live.record_reply(Facts(model="fake", ttft=0.4, completion_tokens=40))
    live.record_reply(
        Facts(
            model="gpt-4o", ttft=None, completion_tokens=0, reason="timeout", error_type="timeout"
        )
    )
    live.record_reply(Facts(model="nonsense", reason="???", error_type="weird"))
    clock.now += 1
    snap = live.snapshot()
    assert snap["errors_60s"] == 2
    assert snap["errors_by_type"] == {"other": 1, "timeout": 1}
    assert snap["ends_by_reason"] == {"other": 1, "stop": 2, "timeout": 1}
    rows = {row["model"]: row for row in snap["models"]}
    assert list(rows) == ["fake", "gpt-4o", "other"]
    assert rows["fake"]["replies"] == 2
    assert rows["fake"]["tokens_per_s"] == pytest.approx(60 / RECENT_SECONDS)
    assert rows["fake"]["ttft_p50"] == pytest.approx(0.2, rel=0.02)
    assert rows["gpt-4o"] == {
        "model": "gpt-4o",
        "replies": 1,
        "tokens_per_s": 0.0,
        "ttft_p50": None,
        "errors": 1,
    }


def test_memory_is_bounded(live: LiveStats, clock: Clock) -> None:
    rng = random.Random(5)
    for second in range(1000):
        clock.now = T0 + second
        for _ in range(10):
            live.record_reply(Facts(model=f"m{rng.random()}", ttft=rng.random() * 10))
    assert len(live._seconds) <= WINDOW_SECONDS + 2
    rows = live.snapshot()["models"]
    assert [row["model"] for row in rows] == ["other"]
