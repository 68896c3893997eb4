"""JSON replies for the fake provider: ``response_format`` json_object and json_schema.

:func:`instance` draws a deterministic instance of a JSON schema (objects with their
required and optional properties, arrays, strings with common formats, numbers and
integers within bounds, booleans, null, ``enum`` / ``const``, ``anyOf`` / ``oneOf`` /
``allOf`` and local ``$ref``s, as pydantic and the openai SDK's strict schemas make
them). :func:`reply_text` is the whole reply text for a request's response format.
Unsupported keywords (``pattern``, ``multipleOf``, ...) are ignored: the instance is
plausible, not a proof.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import orjson

_WORDS = (
    "stream",
    "token",
    "gateway",
    "latency",
    "buffer",
    "socket",
    "event",
    "reply",
    "model",
    "prompt",
    "budget",
    "route",
    "header",
    "chunk",
    "proxy",
    "client",
)
_NAMES = ("Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Alan", "Edsger")
#: Deeper than this, only what is required is generated (recursive schemas end).
_MAX_DEPTH = 6


def reply_text(response_format: Any, rng: random.Random, prompt: str) -> str | None:
    """The JSON text of a reply in ``response_format``; None for plain text."""
    if not isinstance(response_format, Mapping):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        value: Any = {
            "answer": " ".join(rng.sample(_WORDS, 5)).capitalize() + ".",
            "topic": " ".join(prompt.split())[:60] or "your message",
            "confidence": round(rng.uniform(0.5, 1.0), 2),
            "points": [" ".join(rng.sample(_WORDS, 3)) for _ in range(rng.randint(2, 4))],
        }
    elif kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        value = instance(schema if isinstance(schema, Mapping) else {}, rng)
    else:
        return None
    return orjson.dumps(value).decode()


def instance(schema: Mapping[str, Any], rng: random.Random) -> Any:
    """A deterministic instance of ``schema`` (the root, for ``$ref`` lookups)."""
    return _Draw(schema, rng).value(schema, 0)


class _Draw:
    def __init__(self, root: Mapping[str, Any], rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    def resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        seen = 0
        while isinstance(ref := schema.get("$ref"), str) and seen < 32:
            target: Any = self.root
            for part in ref.removeprefix("#").strip("/").split("/"):
                if part:
                    target = target.get(part, {}) if isinstance(target, Mapping) else {}
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **rest} if isinstance(target, Mapping) else rest
            seen += 1
        if isinstance(all_of := schema.get("allOf"), list):
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for member in all_of:
                if isinstance(member, Mapping):
                    sub = self.resolve(member)
                    props = {**merged.get("properties", {}), **sub.get("properties", {})}
                    required = [*merged.get("required", []), *sub.get("required", [])]
                    merged = {**merged, **sub, "properties": props, "required": required}
            schema = merged
        return schema

    def value(self, schema: Mapping[str, Any], depth: int, name: str = "") -> Any:
        rng = self.rng
        schema = self.resolve(schema)
        if "const" in schema:
            return schema["const"]
        if isinstance(enum := schema.get("enum"), list) and enum:
            return rng.choice(enum)
        for combinator in ("anyOf", "oneOf"):
            if isinstance(options := schema.get(combinator), list) and options:
                concrete = [
                    o for o in options if isinstance(o, Mapping) and o.get("type") != "null"
                ]
                if depth >= _MAX_DEPTH and len(concrete) < len(options):
                    return None
                return self.value(rng.choice(concrete or options), depth, name)
        kind = schema.get("type")
        if isinstance(kind, list):
            concrete_kinds = [k for k in kind if k != "null"]
            if not concrete_kinds or (depth >= _MAX_DEPTH and "null" in kind):
                return None
            kind = concrete_kinds[0]
        if kind is None:
            kind = (
                "object" if "properties" in schema else "array" if "items" in schema else "string"
            )
        if kind == "object":
            return self.object(schema, depth)
        if kind == "array":
            return self.array(schema, depth, name)
        if kind == "integer":
            return self.integer(schema)
        if kind == "number":
            return self.number(schema)
        if kind == "boolean":
            return rng.random() < 0.5
        if kind == "null":
            return None
        return self.string(schema, name)

    def object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        out: dict[str, Any] = {}
        for key, sub in properties.items():
            if key in required or depth < _MAX_DEPTH:
                out[key] = self.value(sub if isinstance(sub, Mapping) else {}, depth + 1, key)
        if not properties and schema.get("additionalProperties") not in (False, None):
            extra = schema["additionalProperties"]
            sub = extra if isinstance(extra, Mapping) else {}
            out[self.rng.choice(_WORDS)] = self.value(sub, depth + 1)
        return out

    def array(self, schema: Mapping[str, Any], depth: int, name: str) -> list[Any]:
        low = int(schema.get("minItems") or 0)
        high = int(schema.get("maxItems") or max(low, 3))
        count = low if depth >= _MAX_DEPTH else self.rng.randint(max(low, min(1, high)), high)
        prefix = schema.get("prefixItems") or []
        given = schema.get("items")
        items: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
        return [
            self.value(prefix[i] if i < len(prefix) else items, depth + 1, name)
            for i in range(count)
        ]

    def integer(self, schema: Mapping[str, Any]) -> int:
        low = schema.get("minimum", 0 if "maximum" not in schema else schema["maximum"] - 100)
        high = schema.get("maximum", low + 100)
        if "exclusiveMinimum" in schema:
            low = max(low, schema["exclusiveMinimum"] + 1)
        if "exclusiveMaximum" in schema:
            high = min(high, schema["exclusiveMaximum"] - 1)
        return self.rng.randint(int(low), max(int(low), int(high)))

    def number(self, schema: Mapping[str, Any]) -> float:
        low = float(schema.get("minimum", schema.get("exclusiveMinimum", 0.0)))
        high = float(schema.get("maximum", schema.get("exclusiveMaximum", low + 100.0)))
        value = round(self.rng.uniform(low, high), 2)
        return min(max(value, low), high)

    def string(self, schema: Mapping[str, Any], name: str) -> str:
        rng = self.rng
        fmt = schema.get("format")
        if fmt == "date-time":
            text = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T12:00:00Z"
        elif fmt == "date":
            text = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        elif fmt == "time":
            text = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00"
        elif fmt == "email":
            text = f"{rng.choice(_NAMES).lower()}@example.com"
        elif fmt in ("uri", "url"):
            text = f"https://example.com/{rng.choice(_WORDS)}"
        elif fmt == "uuid":
            text = "-".join(f"{rng.getrandbits(b * 4):0{b}x}" for b in (8, 4, 4, 4, 12))
        elif "name" in name.lower():
            text = rng.choice(_NAMES)
        else:
            text = " ".join(rng.sample(_WORDS, rng.randint(2, 4)))
        low = int(schema.get("minLength") or 0)
        high = schema.get("maxLength")
        while len(text) < low:
            text += " " + rng.choice(_WORDS)
        return text[: int(high)] if high is not None else text
