"""The routing table's consistency: every name a fallback or an alias gives must be a model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from config.models import ModelConfig
from config.unknown_keys import Loc

#: Built-in models, available unless the YAML file defines a model of the same name.
BUILTIN_MODELS: tuple[dict[str, Any], ...] = (
    {
        "name": "fake",
        "provider": "fake",
        # Injected faults are deterministic: retrying them cannot help.
        "retries": 0,
        # A realistic pace for the typing effect.
        "options": {"tokens_per_second": 30.0, "ttft_ms": 300.0, "jitter": 0.35},
    },
    {
        "name": "fake-fast",
        "provider": "fake",
        "retries": 0,
        "options": {"tokens_per_second": 0.0, "ttft_ms": 0.0, "jitter": 0.0},
    },
)


def routing_problems(
    models: Sequence[ModelConfig], aliases: Mapping[str, str]
) -> list[tuple[Loc, str]]:
    """Duplicate models, fallbacks and aliases naming no model: each with its path."""
    problems: list[tuple[Loc, str]] = []
    first_index: dict[str, int] = {}
    for i, model in enumerate(models):
        if model.name in first_index:
            problems.append(
                (
                    ("models", i, "name"),
                    f"duplicate model name {model.name!r} (also models.{first_index[model.name]})",
                )
            )
        first_index.setdefault(model.name, i)
    defined = set(first_index) | {m["name"] for m in BUILTIN_MODELS}
    known = ", ".join(sorted(defined))
    for i, model in enumerate(models):
        for j, fallback in enumerate(model.fallbacks):
            target = aliases.get(fallback, fallback)
            loc: Loc = ("models", i, "fallbacks", j)
            if target not in defined:
                problems.append((loc, f"unknown model {fallback!r} (known: {known})"))
            elif target == model.name:
                problems.append((loc, f"{model.name!r} falls back to itself"))
    for alias, target in aliases.items():
        if target not in defined:
            problems.append((("aliases", alias), f"unknown model {target!r} (known: {known})"))
        elif alias in defined:
            problems.append((("aliases", alias), "the name is already a model"))
    return problems


class Routing(BaseModel):
    """The routing part alone, checked when another setting failed validation."""

    models: list[ModelConfig] = Field(default_factory=list)
    aliases: dict[str, str] = Field(default_factory=dict)
