"""Observability: Prometheus metrics under the OpenTelemetry GenAI names, one set per app.

Everything is declared once, by :class:`Metrics`, against its own
``CollectorRegistry`` (never prometheus-client's global default registry), and is
observed once per reply (:meth:`Metrics.observe_reply`), never per token.

Label values come only from closed sets, so no client input can add a series:

* model, route, key and provider names from configuration (given to the
  constructor); anything else becomes :data:`OTHER`, and a missing key or provider
  becomes :data:`NONE`;
* end reasons, attempt outcomes, endpoints, error types, rate limits and operations
  from the fixed enumerations below (anything else is :data:`OTHER`);
* HTTP statuses as the code when it is one of :data:`STATUS_CODES`, else its class
  (``"2xx"`` ... ``"5xx"``).

Multiprocess (``--workers N``): prometheus-client keeps each process's values in
memory-mapped files under ``PROMETHEUS_MULTIPROC_DIR``, and a scrape of any worker
merges them all. The variable is read when prometheus-client is *imported*, so the
supervisor, before it spawns the workers::

    path = prepare_multiprocess_dir()   # a fresh temp dir, exported to the children
    ...                                 # spawn workers; on each exit: mark_dead(pid)
    cleanup_multiprocess_dir(path)      # at exit

Workers are spawned (not forked), so each imports prometheus-client afresh with the
variable set. :meth:`Metrics.render` merges the directory's files when the variable
is set, else renders the app's own registry.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

#: The environment variable prometheus-client reads at import.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The content type of :meth:`Metrics.render`'s bytes (the classic text format).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

#: The label value of anything outside its closed set.
OTHER = "other"
#: The label value of a key or provider that is absent (no auth; no route reached).
NONE = "none"

OPERATIONS = frozenset({"chat", "text_completion"})
END_REASONS = frozenset(
    {
        "stop",
        "length",
        "tool_calls",
        "cancelled",
        "insufficient_quota",
        "client_gone",
        "send_timeout",
        "timeout",
        "upstream_error",
        "internal_error",
        "shutdown",
        "rejected",
    }
)
ATTEMPT_OUTCOMES = frozenset({"ok", "retry", "fallback", "error"})
#: Endpoints by their route's canonical path (``request.match_info.route.resource.canonical``).
ENDPOINTS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/chat/completions/{reply_id}",
        "/v1/chat/completions/{reply_id}/cancel",
        "/v1/responses",
        "/v1/responses/{reply_id}",
        "/v1/responses/{reply_id}/cancel",
        "/v1/messages",
        "/v1/usage",
        "/v1/models",
        "/v1/models/{model}",
        "/healthz",
        "/metrics",
        "/",
        "/static/{name}",
        "/dashboard",
        "/dashboard/events",
    }
)
ERROR_TYPES = frozenset(
    {
        "timeout",
        "rate_limited",
        "auth",
        "bad_request",
        "unavailable",
        "upstream_error",
        "internal_error",
        "shutdown",
        "client_gone",
        "send_timeout",
    }
)
RATE_LIMITS = frozenset({"requests", "tokens", "concurrency"})
STATUS_CODES = frozenset(
    {200, 204, 304, 400, 401, 403, 404, 405, 408, 413, 422, 429, 499, 500, 502, 503, 504}
)

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1,
    2.5,
    5,
    7.5,
    10,
)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5)
#: 0.01 s doubling to 81.92 s (14 buckets), as the GenAI semantic conventions advise.
DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)

_GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")
_HISTOGRAM_LABELS = (*_GENAI_LABELS, "error_type")


class ReplyFacts(Protocol):
    """What one finished reply tells the metrics (and the dashboard)."""

    @property
    def operation(self) -> str: ...
    @property
    def provider(self) -> str | None: ...
    #: The model name the client sent.
    @property
    def model(self) -> str: ...
    @property
    def key(self) -> str | None: ...
    #: Seconds to the first token; None when none came.
    @property
    def ttft(self) -> float | None: ...
    @property
    def duration(self) -> float: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    #: The end reason (:data:`END_REASONS`).
    @property
    def reason(self) -> str: ...
    #: None or "" when the reply succeeded.
    @property
    def error_type(self) -> str | None: ...


def _child(
    cache: dict[tuple[object, tuple[str, ...]], Any],
    metric: Counter | Gauge | Histogram,
    labels: tuple[str, ...],
) -> Any:
    """``metric.labels(*labels)``, once per label values."""
    child = cache.get((metric, labels))
    if child is None:
        child = cache[(metric, labels)] = metric.labels(*labels)
    return child


def closed(value: str | None, allowed: frozenset[str]) -> str:
    """``value`` when it is in ``allowed``; :data:`NONE` when absent; else :data:`OTHER`."""
    if value is None:
        return NONE
    return value if value in allowed else OTHER


def status_label(status: int) -> str:
    """The code when it is a known one, else its class, else :data:`OTHER`."""
    if status in STATUS_CODES:
        return str(status)
    if 100 <= status <= 599:
        return f"{status // 100}xx"
    return OTHER


def time_per_output_token(facts: ReplyFacts) -> float | None:
    """Seconds per token after the first: ``(duration - ttft) / (completion_tokens - 1)``."""
    if facts.ttft is None or facts.completion_tokens <= 1:
        return None
    return max(facts.duration - facts.ttft, 0.0) / (facts.completion_tokens - 1)


class Metrics:
    """The gateway's metrics, declared against one registry; one object per app."""

    def __init__(
        self,
        *,
        models: Iterable[str],
        routes: Iterable[str],
        keys: Iterable[str],
        providers: Iterable[str],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.models = frozenset(models)
        self.routes = frozenset(routes)
        self.keys = frozenset(keys)
        self.providers = frozenset(providers)
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to generate the first token of a reply.",
            _HISTOGRAM_LABELS,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first, per reply.",
            _HISTOGRAM_LABELS,
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Time from the request to the reply's end.",
            _HISTOGRAM_LABELS,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "tokenpipe_tokens_total",
            "Tokens by type (input, output), model and key.",
            ("gen_ai_token_type", "gen_ai_request_model", "key"),
            registry=r,
        )
        self.in_flight = Gauge(
            "tokenpipe_streams_in_flight",
            "Replies in flight.",
            registry=r,
            # Summed over live workers; a dead worker's value is dropped by mark_dead.
            multiprocess_mode="livesum",
        )
        self.stream_ends = Counter(
            "tokenpipe_stream_ends_total", "Replies ended, by reason.", ("reason",), registry=r
        )
        self.attempts = Counter(
            "tokenpipe_upstream_attempts_total",
            "Upstream attempts by route and outcome (ok, retry, fallback, error).",
            ("route", "outcome"),
            registry=r,
        )
        self.requests = Counter(
            "tokenpipe_requests_total",
            "HTTP requests by endpoint and status.",
            ("endpoint", "status"),
            registry=r,
        )
        self.rate_limited = Counter(
            "tokenpipe_rate_limited_total",
            "Requests refused by a rate limit, by key and limit.",
            ("key", "limit"),
            registry=r,
        )
        # Labelled children by their label values (closed sets: bounded), so a reply's
        # observations skip prometheus-client's per-call label validation and lock.
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}

    def observe_reply(self, facts: ReplyFacts) -> None:
        """Record one finished reply (call once per reply, whatever its end)."""
        model = closed(facts.model, self.models)
        labels = (
            closed(facts.operation, OPERATIONS),
            closed(facts.provider, self.providers),
            model,
            closed(facts.error_type, ERROR_TYPES) if facts.error_type else "",
        )
        children = self._children
        if facts.ttft is not None:
            _child(children, self.ttft, labels).observe(facts.ttft)
        tpot = time_per_output_token(facts)
        if tpot is not None:
            _child(children, self.tpot, labels).observe(tpot)
        _child(children, self.duration, labels).observe(facts.duration)
        key = closed(facts.key, self.keys)
        if facts.prompt_tokens:
            _child(self._children, self.tokens, ("input", model, key)).inc(facts.prompt_tokens)
        if facts.completion_tokens:
            _child(self._children, self.tokens, ("output", model, key)).inc(facts.completion_tokens)
        _child(self._children, self.stream_ends, (closed(facts.reason, END_REASONS),)).inc()

    def stream_started(self) -> None:
        """A reply starts (the in-flight gauge)."""
        self.in_flight.inc()

    def stream_ended(self) -> None:
        """A reply ended, however it ended."""
        self.in_flight.dec()

    def observe_attempt(self, route: str, outcome: str) -> None:
        """One upstream attempt's outcome: ok, retry, fallback or error."""
        labels = (closed(route, self.routes), closed(outcome, ATTEMPT_OUTCOMES))
        _child(self._children, self.attempts, labels).inc()

    def observe_request(self, endpoint: str, status: int) -> None:
        """One HTTP request, by its route's canonical path and its status."""
        labels = (closed(endpoint, ENDPOINTS), status_label(status))
        _child(self._children, self.requests, labels).inc()

    def observe_rate_limited(self, key: str | None, limit: str) -> None:
        """One request refused by ``limit`` (requests, tokens, concurrency)."""
        labels = (closed(key, self.keys), closed(limit, RATE_LIMITS))
        _child(self._children, self.rate_limited, labels).inc()

    def render(self) -> bytes:
        """The exposition text (:data:`CONTENT_TYPE`): all workers' when multiprocess."""
        path = multiprocess_dir()
        if path is not None:
            merged = CollectorRegistry()
            # prometheus-client ships py.typed but leaves this constructor unannotated.
            multiprocess.MultiProcessCollector(merged, path=str(path))  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics``: the app's :class:`Metrics` (``request.app[METRICS]``)."""
    body = request.app[METRICS].render()
    return web.Response(
        body=body, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"}
    )


# --- the supervisor's side of multiprocess mode ------------------------------------


def multiprocess_dir() -> Path | None:
    """The shared directory when running multiprocess (the variable is set), else None."""
    path = os.environ.get(MULTIPROC_ENV)
    return Path(path) if path else None


def prepare_multiprocess_dir() -> Path:
    """Create a fresh directory and export it to the workers spawned after this call.

    Call in the supervisor before starting workers. The supervisor itself records
    nothing, so it does not matter whether it imported prometheus-client already.
    """
    path = Path(tempfile.mkdtemp(prefix="tokenpipe-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def cleanup_multiprocess_dir(path: Path) -> None:
    """Remove the directory (at the supervisor's exit) and stop exporting it."""
    shutil.rmtree(path, ignore_errors=True)
    if os.environ.get(MULTIPROC_ENV) == str(path):
        del os.environ[MULTIPROC_ENV]


def mark_dead(pid: int) -> None:
    """Forget a dead worker's live gauges (its counters and histograms stay summed)."""
    path = multiprocess_dir()
    if path is not None:
        # Unannotated in prometheus-client (py.typed notwithstanding).
        multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
