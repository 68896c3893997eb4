"""The reply record's observers for metrics and the live dashboard.

Hung off :class:`~gateway.streaming.record.ReplyRecord` when it ends: one set of
observations per reply, never per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.errors import LimitsUnavailable, RateLimited, UpstreamRateLimited
from gateway.observability.live_stats import LiveStats
from gateway.observability.metrics import Metrics

if TYPE_CHECKING:
    from gateway.streaming.record import ReplyObserver, ReplyRecord

_OK = frozenset({"stop", "length", "tool_calls"})


def _error_type(record: ReplyRecord) -> str | None:
    """The metrics' ``error_type``: the record's end reason, with what it folds in
    (a rate-limited upstream ends as ``upstream_error``, a key's refusal found while
    the upstream started ahead as ``rejected``) told apart."""
    if record.reason in _OK:
        return None
    if isinstance(record.error, UpstreamRateLimited):
        return "rate_limited"
    if record.reason == "rejected":
        if isinstance(record.error, RateLimited):
            return "rate_limited"
        if isinstance(record.error, LimitsUnavailable):
            return "unavailable"
        return "bad_request"
    return record.reason


@dataclass(frozen=True, slots=True)
class ReplyFactsOf:
    """The :class:`~gateway.observability.metrics.ReplyFacts` of a finished record."""

    operation: str
    provider: str | None
    model: str
    key: str | None
    ttft: float | None
    duration: float
    prompt_tokens: int
    completion_tokens: int
    reason: str
    error_type: str | None

    @classmethod
    def of(cls, record: ReplyRecord) -> ReplyFactsOf:
        started = record.route is not None
        return cls(
            operation=record.operation,
            provider=record.route.provider_kind if record.route else None,
            model=record.request.model,
            key=record.key,
            ttft=record.ttft,
            duration=record.duration,
            prompt_tokens=record.prompt_tokens() if started else 0,
            completion_tokens=record.reported_completion_tokens(),
            reason=record.reason,
            error_type=_error_type(record),
        )


def reply_observer(metrics: Metrics, live: LiveStats) -> ReplyObserver:
    """One observer feeding both: the gauge down, the histograms and counters once."""

    def observe(record: ReplyRecord) -> None:
        facts = ReplyFactsOf.of(record)
        metrics.stream_ended()
        live.stream_ended()
        metrics.observe_reply(facts)
        live.record_reply(facts)

    return observe
