"""What the gateway relies on inside aiohttp and the openai SDK: fails loudly on upgrade.

Each test names the module that relies on the internal; when one fails after an
upgrade, that module is the one to revisit (see its docstring).
"""

from __future__ import annotations

import inspect
from typing import Any

import httpx2
import openai
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.server import aiohttp_internals
from providers.openai import sdk_internals
from tests.support.fakes.openai_upstream import Behaviour, FakeOpenAIUpstream


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


async def test_sdk_raw_stream_takes_the_fast_path() -> None:
    """sdk_internals.raw_body_chunks reads ``response.stream`` as an async generator."""
    assert hasattr(openai, "DefaultAioHttpClient")
    async with FakeOpenAIUpstream([Behaviour(tokens=3)]) as fake:
        client = openai.AsyncOpenAI(
            base_url=fake.base_url, api_key="k", http_client=openai.DefaultAioHttpClient()
        )
        try:
            response = await client.post(
                "/chat/completions",
                cast_to=httpx2.Response,
                body={"model": "m", "messages": [], "stream": True},
                stream=True,
                stream_cls=None,
            )
            assert isinstance(response.stream, httpx2.AsyncByteStream)
            chunks = sdk_internals.raw_body_chunks(response)
            # The fast path returns the transport's own generator, not aiter_bytes().
            assert chunks.__qualname__ != response.aiter_bytes().__qualname__  # type: ignore[attr-defined]
            body = b"".join([c async for c in chunks])
            assert body.endswith(b"data: [DONE]\n\n")
            await response.aclose()
        finally:
            await client.close()


def test_sdk_exceptions_keep_their_aiohttp_cause() -> None:
    """sdk_internals.aiohttp_cause walks ``__cause__``."""
    import aiohttp

    root = aiohttp.ClientConnectionError("refused")
    wrapped = openai.APIConnectionError(request=httpx2.Request("POST", "http://x"))
    wrapped.__cause__ = httpx2.ConnectTimeout("mapped")
    wrapped.__cause__.__cause__ = root
    assert sdk_internals.aiohttp_cause(wrapped) is root


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
