"""Reloading the configuration (SIGHUP, ``POST /admin/reload``) without dropping a stream."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from openai import AsyncOpenAI

from tests.support.gateway import GatewayProcess
from tests.support.ports import free_port
from tests.support.sse_client import chat

KEYS = {"team-a": "sk-team-a-0123456789", "team-b": "sk-team-b-0123456789"}
ADMIN = "sk-admin-0123456789"
#: A fake upstream whose ``timeouts.connect`` a reload changes: a new provider instance.
SLOW = {"name": "slow", "provider": "fake", "retries": 0, "timeouts": {"connect": 5}}


def write_config(path: Path, **settings: Any) -> Path:
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def auth(keys: dict[str, str]) -> dict[str, Any]:
    return {"keys": [{"name": n, "key": k} for n, k in keys.items()], "admin_key": ADMIN}


def events(proc: GatewayProcess, name: str) -> list[dict[str, Any]]:
    return proc.log_events(name)


async def wait_event(proc: GatewayProcess, name: str, count: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = events(proc, name)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} x {name} not logged:\n{proc.logs()[-3000:]}")


async def stream_body(url: str, body: dict[str, Any], key: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as resp,
    ):
        return resp.status, await resp.read()


async def health(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/healthz") as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def wait_active(url: str, count: int) -> None:
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if (await health(session, url))["active_streams"] >= count:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{count} streams did not start")


async def admin_reload(url: str, key: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/admin/reload", headers=headers) as resp,
    ):
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def test_sighup_reload_keeps_20_open_streams(
    gateway_process: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    path = write_config(tmp_path / "gw.yaml", models=[SLOW], auth=auth(KEYS))
    proc = gateway_process("--config", str(path))
    body = chat(model="slow", fake={"tokens_per_second": 20, "reply_tokens": 60})
    streams = [asyncio.create_task(stream_body(proc.url, body, KEYS["team-a"])) for _ in range(20)]
    await wait_active(proc.url, 20)

    new_keys = {"team-a": KEYS["team-a"], "team-c": "sk-team-c-0123456789"}
    changed = {**SLOW, "timeouts": {"connect": 6}}
    new_model = {"name": "fake-new", "provider": "fake", "retries": 0}
    write_config(path, models=[changed, new_model], auth=auth(new_keys))
    os.kill(proc.proc.pid, signal.SIGHUP)
    [reloaded] = await wait_event(proc, "config_reloaded")
    assert not any(s.done() for s in streams)  # still open after the swap

    team_c = AsyncOpenAI(base_url=f"{proc.url}/v1", api_key=new_keys["team-c"], max_retries=0)
    team_b = AsyncOpenAI(base_url=f"{proc.url}/v1", api_key=KEYS["team-b"], max_retries=0)
    async with team_c, team_b:
        reply = await team_c.chat.completions.create(
            model="fake-new", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert reply.choices[0].message.content
        assert "fake-new" in [m.id async for m in team_c.models.list()]
        with pytest.raises(openai.AuthenticationError):
            await team_b.chat.completions.create(
                model="fake-fast", messages=[{"role": "user", "content": "hi"}]
            )

    results = await asyncio.gather(*streams)
    assert all(status == 200 for status, _ in results)
    for _, raw in results:
        assert raw.endswith(b"data: [DONE]\n\n")
        assert b'"error"' not in raw
    assert reloaded["models_added"] == ["fake-new"]
    assert reloaded["models_changed"] == ["slow"]
    assert reloaded["keys_added"] == ["team-c"]
    assert reloaded["keys_removed"] == ["team-b"]
    assert reloaded["providers_retired"] == 1
    # The replaced provider closes once the last stream that used it has finished.
    [closed] = await wait_event(proc, "provider_closed")
    logs = proc.logs()
    assert logs.index("provider_closed") > logs.rindex("stream_finished")
    assert closed["reason"] == "replaced"
    code, logs = proc.stop()
    assert code == 0
    assert all(secret not in logs for secret in [*KEYS.values(), *new_keys.values(), ADMIN])


async def test_broken_file_is_refused_and_old_config_kept(
    gateway_process: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    path = write_config(tmp_path / "gw.yaml", models=[SLOW], auth=auth(KEYS))
    proc = gateway_process("--config", str(path))
    secret = "sk-do-not-log-0123456789"
    broken = {**SLOW, "timeouts": {"frist_token": 3}}
    write_config(
        path, models=[broken], auth={"keys": [{"name": "x", "key": secret}], "admin_key": ADMIN}
    )
    os.kill(proc.proc.pid, signal.SIGHUP)
    [failed] = await wait_event(proc, "config_reload_failed")
    assert any("models.0.timeouts.frist_token" in p for p in failed["problems"])
    assert failed["source"] == "sighup"

    status, _ = await stream_body(proc.url, chat(model="slow", max_tokens=2), KEYS["team-b"])
    assert status == 200  # the old routes and keys serve on

    status, error = await admin_reload(proc.url, ADMIN)
    assert status == 400
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["code"] == "invalid_config"
    assert "models.0.timeouts.frist_token: unknown setting" in error["error"]["message"]
    assert not events(proc, "config_reloaded")
    code, logs = proc.stop()
    assert code == 0
    assert secret not in logs


async def test_workers_all_reload_on_sighup(
    gateway_process: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    path = write_config(tmp_path / "gw.yaml", models=[])
    proc = gateway_process("--config", str(path), "--workers", "2")
    write_config(path, models=[{"name": "fake-new", "provider": "fake"}])
    os.kill(proc.proc.pid, signal.SIGHUP)
    await wait_event(proc, "config_reloaded", count=2)
    served: set[int] = set()
    deadline = time.monotonic() + 20
    while len(served) < 2 and time.monotonic() < deadline:
        # A fresh connection each time (the kernel picks a worker); one worker per session.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            pid = (await health(session, proc.url))["pid"]
            async with session.get(f"{proc.url}/v1/models/fake-new") as resp:
                assert resp.status == 200, f"worker {pid} does not route fake-new"
            served.add(pid)
    assert len(served) == 2
    code, _ = proc.stop()
    assert code == 0


async def test_port_change_needs_restart_and_keeps_serving(
    gateway_process: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    port = free_port()
    path = write_config(tmp_path / "gw.yaml", port=port)
    proc = gateway_process("--config", str(path), port_in_config=port)
    write_config(path, port=free_port(), heartbeat_seconds=5)
    os.kill(proc.proc.pid, signal.SIGHUP)
    [warning] = await wait_event(proc, "config_reload_needs_restart")
    assert warning["settings"] == ["port"]
    [reloaded] = await wait_event(proc, "config_reloaded")
    assert reloaded["settings_changed"] == ["heartbeat_seconds"]

    status, body = await admin_reload(proc.url)  # keys off: open to loopback clients
    assert status == 200
    assert body["needs_restart"] == ["port"]
    status, raw = await stream_body(proc.url, chat(max_tokens=2), "unused")
    assert status == 200
    assert raw.endswith(b"data: [DONE]\n\n")
    code, _ = proc.stop()
    assert code == 0


async def test_admin_reload_needs_the_admin_key(
    gateway_process: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    path = write_config(tmp_path / "gw.yaml", auth=auth(KEYS))
    proc = gateway_process("--config", str(path))
    assert (await admin_reload(proc.url))[0] == 401
    status, error = await admin_reload(proc.url, KEYS["team-a"])
    assert status == 401
    assert error["error"]["code"] == "invalid_api_key"
    status, body = await admin_reload(proc.url, ADMIN)
    assert status == 200
    assert body["status"] == "reloaded"
    assert body["models_added"] == []
