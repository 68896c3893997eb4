"""A reload in process: replies in flight keep their provider, closed once they end."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from config import Settings
from gateway.app import create_app
from gateway.state import STATE
from providers.openai.provider import OpenAIProvider
from tests.support.fakes.openai_upstream import Behaviour, FakeOpenAIUpstream, expected_text
from tests.support.sse_client import chat, parse_stream


def upstream_model(base_url: str, api_key: str) -> dict[str, Any]:
    return {"name": "up", "provider": "openai", "base_url": base_url, "api_key": api_key}


async def test_replaced_provider_closes_after_its_last_stream(tmp_path: Path) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=40, delay=0.05)) as fake:
        path = tmp_path / "gw.yaml"
        path.write_text(yaml.safe_dump({"models": [upstream_model(fake.base_url, "k-old")]}))
        overrides = {"config": path, "port": 0, "_env_file": None}
        app = create_app(Settings(**overrides), overrides=overrides)
        async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as http:
            url = str(server.make_url("")).rstrip("/")
            old = app[STATE].registry.resolve("up")[0].provider
            assert isinstance(old, OpenAIProvider)
            stream = asyncio.create_task(
                http.post(f"{url}/v1/chat/completions", json=chat(model="up"))
            )
            while app[STATE].active == 0:
                await asyncio.sleep(0.01)

            path.write_text(yaml.safe_dump({"models": [upstream_model(fake.base_url, "k-new")]}))
            with capture_logs() as logs:
                async with http.post(f"{url}/admin/reload") as resp:
                    assert resp.status == 200
                    assert (await resp.json())["models_changed"] == ["up"]
                assert not old._client.is_closed()  # the stream still uses it

                async with http.post(
                    f"{url}/v1/chat/completions", json=chat(model="up", stream=False)
                ) as resp:
                    assert resp.status == 200
                assert fake.requests[-1].headers["Authorization"] == "Bearer k-new"

                response = await stream
                raw = await response.read()
                deadline = time.monotonic() + 5
                while not old._client.is_closed() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            assert old._client.is_closed()
            data, _, _, _ = parse_stream(raw)
            assert data[-1] == "[DONE]"
            chunks = [orjson.loads(d) for d in data[:-1]]
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
            assert text == expected_text(40)  # every token arrived
            assert fake.requests[0].headers["Authorization"] == "Bearer k-old"
            assert [e["reason"] for e in logs if e["event"] == "provider_closed"] == ["replaced"]
            new = app[STATE].registry.resolve("up")[0].provider
            assert new is not old
            assert len(app[STATE].retired) == 0


async def test_unchanged_upstream_keeps_its_provider(tmp_path: Path) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=2)) as fake:
        path = tmp_path / "gw.yaml"
        path.write_text(yaml.safe_dump({"models": [upstream_model(fake.base_url, "k")]}))
        overrides = {"config": path, "port": 0, "_env_file": None}
        app = create_app(Settings(**overrides), overrides=overrides)
        async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as http:
            url = str(server.make_url("")).rstrip("/")
            before = app[STATE].registry.resolve("up")[0].provider
            model = {**upstream_model(fake.base_url, "k"), "name": "up2"}
            path.write_text(yaml.safe_dump({"models": [upstream_model(fake.base_url, "k"), model]}))
            async with http.post(f"{url}/admin/reload") as resp:
                body = await resp.json()
            assert body["models_added"] == ["up2"]
            registry = app[STATE].registry
            assert registry.resolve("up")[0].provider is before
            assert registry.resolve("up2")[0].provider is before
            assert len(app[STATE].retired) == 0
