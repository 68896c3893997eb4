"""A streamed reply runs in one task, from its upstream request to its end.

The handler starts the reply's task first: its first step asks the upstream, and the
rest (admission, the reply log, the response) is set up beside it while the upstream
works on its first token. There is no second task handing the upstream over: one
task less for every stream waiting for its first token, and one hop less on the
time to first token.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

from config import Settings
from gateway.app import create_app
from gateway.state import STATE
from providers.base import ChatRequest
from tests.support.sse_client import parse_stream


def _body(**fake: Any) -> dict[str, Any]:
    return {
        "model": "fake",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "max_tokens": 5,
        "fake": fake,
    }


async def test_the_upstream_is_asked_by_the_task_that_streams_the_reply() -> None:
    overrides: dict[str, Any] = {"port": 0, "_env_file": None}
    app = create_app(Settings(**overrides), overrides=overrides)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as http:
        state = app[STATE]
        provider = state.registry.resolve("fake")[0].provider
        original = provider.stream
        asked_in: list[asyncio.Task[Any] | None] = []

        def stream(request: ChatRequest) -> Any:
            asked_in.append(asyncio.current_task())
            events: Any = original(request)
            return events

        provider.stream = stream  # type: ignore[method-assign]
        url = str(server.make_url("/v1/chat/completions"))
        response = await http.post(url, json=_body(ttft_ms=400))
        # Headers come with the first token; meanwhile the reply waits for it.
        async with asyncio.timeout(10):
            while not state.inflight:
                await asyncio.sleep(0.01)
        (task,) = state.inflight
        assert asked_in == [task]
        data = parse_stream(await response.read())[0]
        assert response.status == 200
        assert data[-1] == "[DONE]"
        text = "".join(
            orjson.loads(d)["choices"][0]["delta"].get("content") or "" for d in data[:-1]
        )
        assert len(text) > 0
        async with asyncio.timeout(5):
            while not task.done():
                await asyncio.sleep(0.01)
        assert not state.inflight
