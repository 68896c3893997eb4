"""``GET /v1/models`` and ``GET /v1/models/{model}``."""

from __future__ import annotations

from aiohttp import web

from gateway.dialects.chat_completions import model_list
from gateway.http.middleware import json_response
from gateway.state import STATE


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``."""
    state = request.app[STATE]
    return json_response(model_list(state.registry.names(), state.started_at))


async def get_model(request: web.Request) -> web.Response:
    """``GET /v1/models/{model}``."""
    name = request.match_info["model"]
    state = request.app[STATE]
    state.registry.resolve(name)  # raises NotFound
    return json_response(model_list([name], state.started_at)["data"][0])
