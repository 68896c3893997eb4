"""``--check-config FILE --connect`` against a real loopback upstream and a refused port."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.ports import free_port


async def run_tokenpipe(*args: str) -> tuple[int, str, str]:
    """The CLI as a subprocess, so this test's loop keeps serving the upstream."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def upstream() -> tuple[TestServer, list[str]]:
    """An OpenAI-style /v1/models that wants a key (401), and the paths it saw."""
    seen: list[str] = []

    async def models(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"object": "list", "data": []}, status=401)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server, seen


async def test_reachable_upstream(tmp_path: Path) -> None:
    server, seen = await upstream()
    try:
        base = str(server.make_url("/v1"))
        (tmp_path / "c.yaml").write_text(
            f"models:\n"
            f"  - {{name: a, provider: openai, base_url: '{base}', api_key: sk-hidden}}\n"
            f"  - {{name: b, provider: openai, base_url: '{base}'}}\n"
        )
        code, out, err = await run_tokenpipe("--check-config", "c.yaml", "--connect")
    finally:
        await server.close()
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "c.yaml: OK (4 models: a, b, fake, fake-fast)",
        f"connect ok: GET {base}/models: HTTP 401",  # answered: reachable
        "connect skipped: redis: redis_url is not set",
    ]
    assert seen == ["/v1/models"]  # one GET per distinct base_url
    assert "sk-hidden" not in out


async def test_refused_port(tmp_path: Path) -> None:
    server, _ = await upstream()
    port = free_port()  # nothing listens there
    try:
        good = str(server.make_url("/v1"))
        (tmp_path / "c.yaml").write_text(
            f"models:\n"
            f"  - {{name: a, provider: openai, base_url: '{good}'}}\n"
            f"  - {{name: b, provider: openai, base_url: 'http://127.0.0.1:{port}/v1'}}\n"
        )
        code, out, err = await run_tokenpipe("--check-config", "c.yaml", "--connect")
    finally:
        await server.close()
    assert code == 1
    lines = out.splitlines()
    assert f"connect ok: GET {good}/models: HTTP 401" in lines
    refused = f"connect FAILED: GET http://127.0.0.1:{port}/v1/models: ClientConnectorError: "
    assert any(line.startswith(refused) and "Connect call failed" in line for line in lines), out
    assert err == "tokenpipe: 1 unreachable\n"


async def test_connect_needs_check_config() -> None:
    code, _, err = await run_tokenpipe("--connect")
    assert code == 2
    assert "--connect needs --check-config FILE" in err
