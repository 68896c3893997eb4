"""Reloading the configuration live: on ``SIGHUP`` or ``POST /admin/reload``.

The settings are loaded again exactly as at start-up (:func:`gateway.cli.read_settings`
with the same flags, so the YAML file and ``.env`` are re-read, then the start-up
refusals). A configuration that fails is refused whole: one ``config_reload_failed``
event lists the problems and the old configuration stays. A good one is swapped in
at once (:meth:`GatewayState.reconfigure`): a new routing table that reuses the
provider of every unchanged upstream, a new key ring in the same gate (limits and
usage kept), the metrics' label sets widened. New requests see it; a reply in
flight holds the routes it was given, so it finishes on the configuration it
started with, and a replaced provider is closed when the last such reply ends.

Settings read once at start-up (the socket, the processes, the stores, logging,
the tokenizer, the HTTP server's limits) cannot change live: a change to one of
:data:`RESTART_ONLY` is warned about (``config_reload_needs_restart``) and the
running value kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
from aiohttp import web

from config import Settings
from gateway.admission.keys import KeyRing
from gateway.cli import InvalidSettings, read_settings
from gateway.routing.registry import Registry
from gateway.server.preflight import refusals
from gateway.state import STATE

log = structlog.get_logger("tokenpipe.reload")

#: Settings captured at start-up; a reload reports a change and keeps the running value.
RESTART_ONLY = (
    "host",
    "port",
    "workers",
    "config",
    "redis_url",
    "log_level",
    "log_format",
    "tokenizer_encoding",
    "resume_ttl_seconds",
    # The HTTP server's and the middlewares' own copies.
    "max_body_bytes",
    "request_read_timeout_seconds",
    "keepalive_timeout_seconds",
    "heap_trim_seconds",
    "allowed_hosts",
    "cors_origins",
)
#: Reported by name in their own fields of :class:`Changes`.
_ROUTING_AND_KEYS = ("models", "aliases", "auth", "fake_models")


class ReloadRefused(Exception):
    """The new configuration is invalid; ``problems`` says why, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True, slots=True)
class Changes:
    """What a reload changed: names only, never a value of a key."""

    models_added: list[str] = field(default_factory=list)
    models_removed: list[str] = field(default_factory=list)
    models_changed: list[str] = field(default_factory=list)
    aliases_added: list[str] = field(default_factory=list)
    aliases_removed: list[str] = field(default_factory=list)
    #: Aliases now naming another model.
    aliases_changed: list[str] = field(default_factory=list)
    keys_added: list[str] = field(default_factory=list)
    keys_removed: list[str] = field(default_factory=list)
    keys_changed: list[str] = field(default_factory=list)
    #: Other settings now in effect with a new value.
    settings_changed: list[str] = field(default_factory=list)
    #: Settings changed in the file that keep their running value until a restart.
    needs_restart: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return asdict(self)


def _diff(old: Iterable[str], new: Iterable[str]) -> tuple[list[str], list[str]]:
    before, after = list(old), list(new)
    return [n for n in after if n not in before], [n for n in before if n not in after]


def _changes(
    old: Settings,
    new: Settings,
    old_routes: Registry,
    new_routes: Registry,
    needs_restart: list[str],
) -> Changes:
    """``new`` is the settings as applied (restart-only values already kept)."""
    models_before, models_after = old_routes.models(), new_routes.models()
    added, removed = _diff(models_before, models_after)
    aliases_before, aliases_after = old_routes.aliases(), new_routes.aliases()
    aliases_added, aliases_removed = _diff(aliases_before, aliases_after)
    keys_before = {k.name: k.model_dump() for k in old.auth.keys}
    keys_after = {k.name: k.model_dump() for k in new.auth.keys}
    keys_added, keys_removed = _diff(keys_before, keys_after)
    # SecretStr compares by its value, so a new secret under the same name shows too.
    keys_changed = [n for n in keys_after if n in keys_before and keys_before[n] != keys_after[n]]
    settings_changed = [
        name
        for name in type(new).model_fields
        if name not in _ROUTING_AND_KEYS and getattr(old, name) != getattr(new, name)
    ]
    if old.auth.admin_key != new.auth.admin_key:
        settings_changed.append("auth.admin_key")
    return Changes(
        models_added=added,
        models_removed=removed,
        models_changed=[
            n for n in models_after if n in models_before and models_before[n] != models_after[n]
        ],
        aliases_added=aliases_added,
        aliases_removed=aliases_removed,
        aliases_changed=[
            a
            for a in aliases_after
            if a in aliases_before and aliases_before[a] != aliases_after[a]
        ],
        keys_added=keys_added,
        keys_removed=keys_removed,
        keys_changed=keys_changed,
        settings_changed=settings_changed,
        needs_restart=needs_restart,
    )


class Reloader:
    """Re-loads the settings of one app with the flags it started with; one at a time."""

    def __init__(self, app: web.Application, overrides: Mapping[str, Any]) -> None:
        self._app = app
        self._overrides = dict(overrides)
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def reload(self, source: str) -> Changes:
        """Load, validate and apply; raises :class:`ReloadRefused` (the old one stays)."""
        async with self._lock:
            return await self._reload(source)

    async def _reload(self, source: str) -> Changes:
        state = self._app[STATE]
        old = state.settings
        try:
            # Reads files; a thread keeps the loop serving meanwhile.
            loaded = await asyncio.to_thread(read_settings, self._overrides)
        except InvalidSettings as exc:
            problems = [f"{exc.heading}: {p}" for p in exc.problems]
        else:
            needs_restart = [n for n in RESTART_ONLY if getattr(loaded, n) != getattr(old, n)]
            applied = loaded.model_copy(update={n: getattr(old, n) for n in RESTART_ONLY})
            problems = refusals(applied)
        if problems:
            log.error("config_reload_failed", source=source, problems=problems)
            raise ReloadRefused(problems)
        if needs_restart:
            log.warning("config_reload_needs_restart", source=source, settings=needs_restart)
        registry = Registry.from_settings(applied, state.tokenizer, reuse=state.registry)
        changes = _changes(old, applied, state.registry, registry, needs_restart)
        before = {id(p) for p in state.registry.providers()}
        after = {id(p) for p in registry.providers()}
        state.reconfigure(applied, registry, KeyRing(applied.auth))
        self._widen_labels(registry, applied)
        log.info(
            "config_reloaded",
            source=source,
            providers_new=len(after - before),
            providers_reused=len(after & before),
            providers_retired=len(before - after),
            **{k: v for k, v in changes.as_dict().items() if k != "needs_restart"},
        )
        return changes

    def _widen_labels(self, registry: Registry, settings: Settings) -> None:
        # Widened, not replaced: replies in flight may still report a removed name.
        state = self._app[STATE]
        models = registry.models()
        state.metrics.models |= frozenset(registry.names())
        state.metrics.routes |= frozenset(models)
        state.metrics.keys |= frozenset(k.name for k in settings.auth.keys)
        state.live.models |= frozenset(registry.names())

    def on_signal(self) -> None:
        """SIGHUP: reload in the background (a refusal is logged and otherwise ignored)."""
        task = asyncio.ensure_future(self._from_signal())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _from_signal(self) -> None:
        try:
            await self.reload("sighup")
        except ReloadRefused:
            pass  # logged; the old configuration serves on
        except Exception:
            log.exception("config_reload_crashed")


RELOADER = web.AppKey("reloader", Reloader)
