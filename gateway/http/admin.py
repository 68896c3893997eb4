"""Operator endpoints: ``GET /v1/usage``, ``GET /metrics`` and ``POST /admin/reload``.

With keys configured they need the admin key (``/metrics`` not when
``metrics_public``); with no keys they are open, like the rest of a loopback
gateway, except the reload: from a loopback client only.
"""

from __future__ import annotations

from aiohttp import web

from gateway.errors import BadRequest, Forbidden
from gateway.http.middleware import json_response
from gateway.observability.metrics import metrics_handler
from gateway.reload import RELOADER, ReloadRefused
from gateway.server.preflight import is_loopback
from gateway.state import STATE


def require_admin(request: web.Request) -> None:
    """Raises 401 unless keys are off or the request presents the admin key."""
    gate = request.app[STATE].gate
    if gate.enabled:
        gate.require_admin(request.headers)


async def usage(request: web.Request) -> web.Response:
    """Per-key totals: requests, prompt and completion tokens, by model and day, budget."""
    require_admin(request)
    key = request.query.get("key") or None
    totals = await request.app[STATE].gate.store.usage(key)
    return json_response({"object": "usage", "keys": totals})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format, for the whole server (every worker)."""
    if not request.app[STATE].settings.metrics_public:
        require_admin(request)
    return await metrics_handler(request)


async def reload_config(request: web.Request) -> web.Response:
    """Re-read the configuration; 400 with every problem when it is refused."""
    if request.app[STATE].gate.enabled:
        require_admin(request)
    elif not is_loopback(request.remote or ""):
        raise Forbidden(
            "With no API keys configured, the configuration is reloaded from this machine only.",
            code="loopback_only",
        )
    try:
        changes = await request.app[RELOADER].reload("admin")
    except ReloadRefused as exc:
        raise BadRequest(
            "The configuration was not reloaded (the running one is kept): "
            + "; ".join(exc.problems),
            code="invalid_config",
        ) from None
    return json_response({"object": "config.reload", "status": "reloaded", **changes.as_dict()})
