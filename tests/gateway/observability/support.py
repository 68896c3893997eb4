"""Test support: concrete reply facts, and the exposition parsed into series."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.metrics import Metrics

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass(frozen=True)
class Facts:
    """One finished reply, as the relay will report it."""

    model: str = "fake"
    operation: str = "chat"
    provider: str | None = "fake"
    key: str | None = "team-a"
    ttft: float | None = 0.05
    duration: float = 1.0
    prompt_tokens: int = 10
    completion_tokens: int = 20
    reason: str = "stop"
    error_type: str | None = None


def series(metrics: Metrics) -> Series:
    """Every sample of the exposition, by name and labels (``_created`` dropped)."""
    out: Series = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def labels(**values: str) -> frozenset[tuple[str, str]]:
    """A label set, as :func:`series` keys it."""
    return frozenset(values.items())


def make_metrics() -> Metrics:
    """Metrics with a small configuration."""
    return Metrics(
        models=["fake", "gpt-4o"],
        routes=["fake", "openai-main", "openai-backup"],
        keys=["team-a", "team-b"],
        providers=["fake", "openai", "anthropic"],
    )


def genai(model: str, provider: str = "fake", error_type: str = "") -> frozenset[tuple[str, str]]:
    """The histograms' label set."""
    return labels(
        gen_ai_operation_name="chat",
        gen_ai_provider_name=provider,
        gen_ai_request_model=model,
        error_type=error_type,
    )
