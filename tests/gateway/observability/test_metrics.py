"""Metrics: exact exposition after a known mix, buckets, closed label sets, /metrics."""

from __future__ import annotations

import random
import string
from collections.abc import Iterable

import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.metrics import (
    CONTENT_TYPE,
    METRICS,
    Metrics,
    metrics_handler,
    status_label,
)
from tests.gateway.observability.support import Facts, genai, labels, make_metrics, series


def le_values(metrics: Metrics, name: str) -> list[str]:
    for family in text_string_to_metric_families(metrics.render().decode()):
        if family.name == name:
            return sorted(
                {s.labels["le"] for s in family.samples if s.name.endswith("_bucket")},
                key=float,
            )
    raise AssertionError(f"{name} not exposed")


def observe_mix(metrics: Metrics) -> None:
    metrics.observe_reply(Facts(ttft=0.05, duration=1.05, completion_tokens=11))  # tpot 0.1
    metrics.observe_reply(Facts(ttft=0.3, duration=2.3, completion_tokens=5, key="team-b"))
    metrics.observe_reply(  # failed before any token
        Facts(
            model="gpt-4o",
            provider="openai",
            ttft=None,
            duration=0.5,
            completion_tokens=0,
            reason="upstream_error",
            error_type="unavailable",
        )
    )
    metrics.observe_reply(Facts(ttft=0.02, duration=0.02, completion_tokens=1))  # no tpot
    for _ in range(3):
        metrics.stream_started()
    metrics.stream_ended()
    metrics.observe_attempt("openai-main", "retry")
    metrics.observe_attempt("openai-main", "fallback")
    metrics.observe_attempt("openai-backup", "ok")
    metrics.observe_request("/v1/chat/completions", 200)
    metrics.observe_request("/v1/chat/completions", 200)
    metrics.observe_request("/v1/chat/completions", 429)
    metrics.observe_rate_limited("team-a", "tokens")


def test_exact_counts_after_a_known_mix() -> None:
    metrics = make_metrics()
    observe_mix(metrics)
    got = series(metrics)
    fake, failed = genai("fake"), genai("gpt-4o", "openai", "unavailable")

    ttft = "gen_ai_server_time_to_first_token_seconds"
    assert got[(f"{ttft}_count", fake)] == 3
    assert got[(f"{ttft}_sum", fake)] == pytest.approx(0.37)
    assert got[(f"{ttft}_bucket", fake | {("le", "0.02")})] == 1
    assert got[(f"{ttft}_bucket", fake | {("le", "0.06")})] == 2
    assert got[(f"{ttft}_bucket", fake | {("le", "0.25")})] == 2
    assert got[(f"{ttft}_bucket", fake | {("le", "0.5")})] == 3
    assert (f"{ttft}_count", failed) not in got  # no first token, no observation

    tpot = "gen_ai_server_time_per_output_token_seconds"
    assert got[(f"{tpot}_count", fake)] == 2
    assert got[(f"{tpot}_sum", fake)] == pytest.approx(0.1 + 0.5)
    assert got[(f"{tpot}_bucket", fake | {("le", "0.1")})] == 1
    assert got[(f"{tpot}_bucket", fake | {("le", "0.5")})] == 2

    duration = "gen_ai_server_request_duration_seconds"
    assert got[(f"{duration}_count", fake)] == 3
    assert got[(f"{duration}_count", failed)] == 1
    assert got[(f"{duration}_sum", failed)] == pytest.approx(0.5)
    assert got[(f"{duration}_bucket", failed | {("le", "0.32")})] == 0
    assert got[(f"{duration}_bucket", failed | {("le", "0.64")})] == 1

    tokens = "tokenpipe_tokens_total"
    assert (
        got[(tokens, labels(gen_ai_token_type="input", gen_ai_request_model="fake", key="team-a"))]
        == 20
    )
    assert (
        got[(tokens, labels(gen_ai_token_type="output", gen_ai_request_model="fake", key="team-a"))]
        == 12
    )
    assert (
        got[(tokens, labels(gen_ai_token_type="output", gen_ai_request_model="fake", key="team-b"))]
        == 5
    )
    assert (
        got[
            (tokens, labels(gen_ai_token_type="input", gen_ai_request_model="gpt-4o", key="team-a"))
        ]
        == 10
    )
    assert (
        tokens,
        labels(gen_ai_token_type="output", gen_ai_request_model="gpt-4o", key="team-a"),
    ) not in got

    assert got[("tokenpipe_streams_in_flight", labels())] == 2
    assert got[("tokenpipe_stream_ends_total", labels(reason="stop"))] == 3
    assert got[("tokenpipe_stream_ends_total", labels(reason="upstream_error"))] == 1
    attempts = "tokenpipe_upstream_attempts_total"
    assert got[(attempts, labels(route="openai-main", outcome="retry"))] == 1
    assert got[(attempts, labels(route="openai-main", outcome="fallback"))] == 1
    assert got[(attempts, labels(route="openai-backup", outcome="ok"))] == 1
    requests = "tokenpipe_requests_total"
    assert got[(requests, labels(endpoint="/v1/chat/completions", status="200"))] == 2
    assert got[(requests, labels(endpoint="/v1/chat/completions", status="429"))] == 1
    assert got[("tokenpipe_rate_limited_total", labels(key="team-a", limit="tokens"))] == 1


def test_bucket_boundaries_are_the_specified_ones() -> None:
    metrics = make_metrics()
    metrics.observe_reply(Facts(ttft=0.05, duration=1.0, completion_tokens=3))

    def text(values: Iterable[float]) -> list[str]:
        return [*(str(float(v)) for v in values), "+Inf"]

    assert le_values(metrics, "gen_ai_server_time_to_first_token_seconds") == text(
        [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]
    )
    assert le_values(metrics, "gen_ai_server_time_per_output_token_seconds") == text(
        [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5]
    )
    assert le_values(metrics, "gen_ai_server_request_duration_seconds") == text(
        [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
    )


def observe_random(metrics: Metrics, seed: int, count: int) -> None:
    rng = random.Random(seed)
    for _ in range(count):
        name = "".join(rng.choices(string.printable, k=rng.randint(5, 40)))
        metrics.observe_reply(
            Facts(model=name, key=name, provider=name, reason=name, error_type=name, operation=name)
        )
        metrics.observe_attempt(name, name)
        metrics.observe_request(name, rng.randint(-5, 1000))
        metrics.observe_rate_limited(name, name)


def test_random_names_add_no_series() -> None:
    metrics = make_metrics()
    observe_random(metrics, seed=1, count=10_000)
    first = series(metrics)
    observe_random(metrics, seed=2, count=10_000)
    second = series(metrics)

    assert second.keys() == first.keys()
    # Every label is "other" but the status, which falls into a few fixed classes.
    assert len(second) < 120
    for name, label_set in second:
        values = dict(label_set)
        values.pop("le", None)
        values.pop("gen_ai_token_type", None)
        status = values.pop("status", "other")
        assert set(values.values()) <= {"other"}, name
        assert status in {"other", "1xx", "2xx", "3xx", "4xx", "5xx"} | {
            str(code) for code in range(100, 600)
        }


def test_missing_key_and_provider_have_their_own_value() -> None:
    metrics = make_metrics()
    metrics.observe_reply(Facts(key=None, provider=None, ttft=None, error_type="timeout"))
    got = series(metrics)
    count = ("gen_ai_server_request_duration_seconds_count", genai("fake", "none", "timeout"))
    assert got[count] == 1
    assert (
        "tokenpipe_tokens_total",
        labels(gen_ai_token_type="input", gen_ai_request_model="fake", key="none"),
    ) in got


@pytest.mark.parametrize(
    ("status", "label"),
    [
        (200, "200"),
        (429, "429"),
        (201, "2xx"),
        (418, "4xx"),
        (599, "5xx"),
        (0, "other"),
        (1000, "other"),
    ],
)
def test_status_labels(status: int, label: str) -> None:
    assert status_label(status) == label


def test_each_app_has_its_own_registry() -> None:
    first, second = make_metrics(), make_metrics()
    first.stream_started()
    assert series(first)[("tokenpipe_streams_in_flight", labels())] == 1
    assert series(second)[("tokenpipe_streams_in_flight", labels())] == 0
    shared = CollectorRegistry()
    Metrics(models=[], routes=[], keys=[], providers=[], registry=shared)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(models=[], routes=[], keys=[], providers=[], registry=shared)


async def test_metrics_endpoint(aiohttp_client: AiohttpClient) -> None:
    app = web.Application()
    app[METRICS] = make_metrics()
    app.router.add_get("/metrics", metrics_handler)
    observe_mix(app[METRICS])
    client = await aiohttp_client(app)
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE
    text = await response.text()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {
        "gen_ai_server_time_to_first_token_seconds",
        "gen_ai_server_time_per_output_token_seconds",
        "gen_ai_server_request_duration_seconds",
        "tokenpipe_tokens",
        "tokenpipe_streams_in_flight",
        "tokenpipe_stream_ends",
        "tokenpipe_upstream_attempts",
        "tokenpipe_requests",
        "tokenpipe_rate_limited",
    } <= names
