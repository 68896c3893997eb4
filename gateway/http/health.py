"""``GET /healthz``: liveness and readiness."""

from __future__ import annotations

import os

from aiohttp import web

from gateway.http.middleware import json_response
from gateway.state import STATE


async def healthz(request: web.Request) -> web.Response:
    """503 while draining, so load balancers move on."""
    state = request.app[STATE]
    body = {
        "status": "draining" if state.draining else "ok",
        "active_streams": state.active,
        "pid": os.getpid(),
    }
    return json_response(body, status=503 if state.draining else 200)
