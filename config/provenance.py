"""The effective settings, each with the source that supplied it (``tokenpipe --print-config``).

Each source ``Settings.settings_customise_sources`` returns is asked, in its
priority order, which keys it supplies; the first to supply a key is where the
value came from. Values are those of the validated ``Settings``; secrets are ``***``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import SecretBytes, SecretStr
from pydantic_core import to_jsonable_python
from pydantic_settings import (
    DotEnvSettingsSource,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
)
from pydantic_settings.sources import ENV_FILE_SENTINEL, DotenvType

from config.settings import KnownSettingsOnly, Settings, YamlFileSource

SourceKind = Literal["flag", "env", ".env", "file", "default"]
REDACTED = "***"


@dataclass(frozen=True)
class EffectiveSetting:
    """One setting's value (JSON-ready, secrets redacted) and where it came from."""

    name: str
    value: Any
    source: SourceKind
    #: The variable (env) or file path (file) that supplied it.
    detail: str | None = None

    @property
    def origin(self) -> str:
        """``env (TOKENPIPE_PORT)``, ``file (tokenpipe.yaml)``, ``default``..."""
        return f"{self.source} ({self.detail})" if self.detail else self.source


def effective_settings(
    overrides: Mapping[str, Any] | None = None,
    env_file: DotenvType | None = ENV_FILE_SENTINEL,
) -> list[EffectiveSetting]:
    """Every field of ``Settings(_env_file=env_file, **overrides)``, in declaration order.

    ``overrides`` are what the flags gave (the ``init`` source). Raises what
    ``Settings`` raises when the configuration is invalid.
    """
    init = dict(overrides or {})
    settings = Settings(_env_file=env_file, **init)
    sources = Settings.settings_customise_sources(
        Settings,
        init_settings=InitSettingsSource(Settings, init_kwargs=init),
        env_settings=EnvSettingsSource(Settings),
        dotenv_settings=DotEnvSettingsSource(Settings, env_file=env_file),
        file_secret_settings=SecretsSettingsSource(Settings),
    )
    supplied = [(source, source()) for source in sources]
    values = redact(settings.model_dump())
    found = []
    for name in Settings.model_fields:
        kind, detail = _origin(name, supplied)
        found.append(EffectiveSetting(name, values[name], kind, detail))
    return found


def redact(value: Any) -> Any:
    """``value`` as JSON-ready data, every secret replaced by ``***``."""
    if isinstance(value, SecretStr | SecretBytes):
        return REDACTED
    if isinstance(value, Mapping):
        return {str(k): redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    return to_jsonable_python(value)


def flatten(name: str, value: Any) -> Iterator[tuple[str, str]]:
    """``models.0.timeouts.idle  60.0``-style rows for a nested value (text output)."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from flatten(f"{name}.{key}", item)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, item in enumerate(value):
            yield from flatten(f"{name}.{i}", item)
    else:
        yield name, _scalar(value)


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "none"
    return json.dumps(value, separators=(", ", ": "))


def _origin(
    name: str, supplied: list[tuple[PydanticBaseSettingsSource, dict[str, Any]]]
) -> tuple[SourceKind, str | None]:
    for source, data in supplied:
        if name not in data:
            continue
        inner = source.inner if isinstance(source, KnownSettingsOnly) else source
        # DotEnvSettingsSource is an EnvSettingsSource: test it first.
        if isinstance(inner, DotEnvSettingsSource):
            return ".env", None
        if isinstance(inner, EnvSettingsSource):
            prefix = str(Settings.model_config.get("env_prefix", ""))
            return "env", f"{prefix}{name}".upper()
        if isinstance(inner, YamlFileSource):
            return "file", str(inner.path) if inner.path else None
        if isinstance(inner, InitSettingsSource):
            return "flag", None
        return "file", type(inner).__name__  # pragma: no cover - a source added later
    return "default", None
