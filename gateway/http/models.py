"""``GET /v1/models`` and ``GET /v1/models/{model}``: only what the caller's key may use."""

from __future__ import annotations

from aiohttp import web

from gateway.dialects.chat_completions import model_list
from gateway.http.middleware import json_response
from gateway.state import STATE


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``."""
    state = request.app[STATE]
    identity = state.gate.identify(request.headers)
    names = [n for n in state.registry.names() if identity is None or identity.allows(n)]
    return json_response(model_list(names, state.started_at))


async def get_model(request: web.Request) -> web.Response:
    """``GET /v1/models/{model}``."""
    name = request.match_info["model"]
    state = request.app[STATE]
    identity = state.gate.identify(request.headers)
    state.registry.resolve(name)  # raises NotFound
    state.gate.check_model(identity, name)
    return json_response(model_list([name], state.started_at)["data"][0])
