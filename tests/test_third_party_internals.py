"""What the gateway relies on inside aiohttp and the openai SDK: fails loudly on upgrade.

Each test names the module that relies on the internal; when one fails after an
upgrade, that module is the one to revisit (see its docstring).
"""

from __future__ import annotations

import inspect
from typing import Any

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.server import aiohttp_internals
from providers.openai import sdk_internals


def test_app_runner_still_builds_its_server_in_make_server() -> None:
    """gateway/server/header_deadline.py overrides ``AppRunner._make_server``."""
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)


async def test_server_keeps_the_runner_settings_in_kwargs() -> None:
    """aiohttp_internals.server_settings reads ``web.Server._kwargs``."""
    runner = web.AppRunner(web.Application(), keepalive_timeout=12.5)
    await runner.setup()
    try:
        server = runner.server
        assert server is not None
        assert aiohttp_internals.server_settings(server)["keepalive_timeout"] == 12.5
        assert server.request_handler is not None
        assert server.request_factory is not None
    finally:
        await runner.cleanup()


async def test_request_factory_gets_the_protocol_third() -> None:
    """protocol_of_request_factory_call takes the protocol from the third argument."""
    seen: list[Any] = []
    app = web.Application()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    server = runner.server
    assert server is not None
    inner = server.request_factory

    def factory(*args: Any, **kw: Any) -> web.BaseRequest:
        seen.append(aiohttp_internals.protocol_of_request_factory_call(args, kw))
        return inner(*args, **kw)

    server.request_factory = factory
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        import aiohttp

        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/") as response,
        ):
            assert await response.text() == "ok"
    finally:
        await runner.cleanup()
    assert len(seen) == 1
    assert isinstance(seen[0], aiohttp_internals.RequestHandler)


async def test_stream_response_is_chunked_after_prepare() -> None:
    """gateway/streaming/writer.py writes HTTP/1.1 chunks to the transport itself."""
    app = web.Application()
    chunked: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        chunked.append(response.headers.get("Transfer-Encoding", ""))
        assert request.transport is not None
        assert callable(request.writer.drain)
        await response.write(b"x")
        await response.write_eof()
        return response

    app.router.add_get("/", handler)
    server = TestServer(app)
    await server.start_server()
    try:
        import aiohttp

        async with (
            aiohttp.ClientSession() as session,
            session.get(server.make_url("/")) as response,
        ):
            assert await response.read() == b"x"
    finally:
        await server.close()
    assert chunked == ["chunked"]


def test_sdk_builds_the_request_template_once() -> None:
    """sdk_internals.request_template uses ``_build_request`` and ``FinalRequestOptions``."""
    client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-x")
    url, headers = sdk_internals.request_template(client, "/chat/completions")
    assert url == "http://127.0.0.1:9/v1/chat/completions"
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered["authorization"] == "Bearer sk-x"
    assert lowered["content-type"] == "application/json"
    assert "user-agent" in lowered


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (429, openai.RateLimitError),
        (503, openai.InternalServerError),
    ],
)
def test_sdk_makes_its_typed_status_errors(status: int, kind: type[Exception]) -> None:
    """sdk_internals.status_error uses ``_make_status_error_from_response``."""
    client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-x")
    body = b'{"error": {"message": "nope", "type": "t"}}'
    error = sdk_internals.status_error(client, "http://x/v1", status, [("Retry-After", "3")], body)
    assert type(error) is kind
    assert error.status_code == status
    assert error.response.headers["Retry-After"] == "3"
    assert isinstance(error.body, dict)


def test_request_handler_error_seams_exist() -> None:
    """gateway/server/bad_requests.py overrides ``RequestHandler.handle_error``,
    ``log_exception`` and ``data_received``; aiohttp_internals.new_request_handler
    builds it as ``web.Server.__call__`` does (``_loop``, ``_kwargs``)."""
    params = list(inspect.signature(aiohttp_internals.RequestHandler.handle_error).parameters)
    assert params[:5] == ["self", "request", "status", "exc", "message"]
    assert callable(aiohttp_internals.RequestHandler.log_exception)
    assert callable(aiohttp_internals.RequestHandler.data_received)
    source = inspect.getsource(web.Server.__call__)
    assert "RequestHandler(self, loop=self._loop, **self._kwargs)" in source


def test_stream_response_still_decides_when_headers_go_by_a_class_attribute() -> None:
    """gateway/streaming/writer.py's ``_EventResponse`` holds the headers back until the
    first event by ``_send_headers_immediately`` (``web.Response`` sets it False)."""
    assert web.StreamResponse._send_headers_immediately is True
    assert web.Response._send_headers_immediately is False
