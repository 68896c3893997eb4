"""Shared fixtures: the gateway running for real on a loopback port.

The machinery lives in :mod:`tests.support`; this file only registers fixtures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from config import Settings
from gateway.app import create_app
from tests.support.gateway import ROOT, GatewayProcess, MakeGateway
from tests.support.ports import free_port
from tests.support.redis_server import redis_server

__all__ = ["ROOT", "GatewayProcess", "MakeGateway", "free_port", "redis_server"]


@pytest.fixture
async def make_gateway() -> AsyncIterator[MakeGateway]:
    """Start gateways in this event loop: ``url = await make_gateway(**settings)``."""
    servers: list[TestServer] = []

    async def start(**overrides: Any) -> str:
        overrides.setdefault("port", 0)
        settings = Settings(_env_file=None, **overrides)  # type: ignore[call-arg]
        server = TestServer(create_app(settings), host="127.0.0.1", handler_cancellation=True)
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def gateway_url(make_gateway: MakeGateway) -> str:
    """Base URL of a gateway with default settings, e.g. ``http://127.0.0.1:41234``."""
    return await make_gateway()


@pytest.fixture
def gateway_process() -> Iterator[Callable[..., GatewayProcess]]:
    """Start ``python -m gateway`` subprocesses; each is stopped at teardown."""
    started: list[GatewayProcess] = []

    def start(
        *args: str, env: dict[str, str] | None = None, port_in_config: int | None = None
    ) -> GatewayProcess:
        proc = GatewayProcess(*args, env=env, port_in_config=port_in_config)
        started.append(proc)
        proc.wait_ready()
        return proc

    yield start
    for proc in started:
        if not proc._log.closed:
            proc.stop()
