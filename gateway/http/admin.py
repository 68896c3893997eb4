"""Operator endpoints: ``GET /v1/usage`` and ``GET /metrics``.

With keys configured both need the admin key (``/metrics`` not when
``metrics_public``); with no keys they are open, like the rest of a loopback
gateway.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.http.middleware import json_response
from gateway.observability.metrics import metrics_handler
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


#: Paths only the admin key opens when keys are configured (besides the handlers above).
ADMIN_PATHS = frozenset({"/dashboard/events"})


@web.middleware
async def admin_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The dashboard's event stream needs the admin key when keys are on."""
    if request.path in ADMIN_PATHS:
        require_admin(request)
    return await handler(request)
