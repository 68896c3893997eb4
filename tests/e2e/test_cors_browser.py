"""CORS in a real Chromium: a page on another loopback port calls the gateway.

Findings: any web page could POST text/plain JSON to the gateway (drive-by use of
the operator's key), and a legitimate browser app on another origin could not use
it at all (the OPTIONS preflight was a 405).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import async_playwright
from structlog.testing import capture_logs

from tests.conftest import MakeGateway
from tests.support.chromium import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")

SCRIPT = """async ([url, contentType]) => {
  try {
    const resp = await fetch(url + "/v1/chat/completions", {
      method: "POST",
      headers: {"Content-Type": contentType, "Authorization": "Bearer k", "X-Request-ID": "b-1"},
      body: JSON.stringify({model: "fake-fast", max_tokens: 2,
                            messages: [{role: "user", content: "hi"}]}),
    });
    return {status: resp.status, id: resp.headers.get("X-Request-ID"), body: await resp.text()};
  } catch (e) {
    return {error: String(e)};
  }
}"""


@pytest.fixture
async def other_origin() -> AsyncIterator[str]:
    """A page served on another loopback port (another origin)."""
    app = web.Application()

    async def index(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>app</title>", content_type="text/html")

    app.router.add_get("/", index)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/")).rstrip("/")
    await server.close()


async def run_in_page(page_url: str, gateway: str, content_type: str) -> dict[str, object]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(page_url)
            result: dict[str, object] = await page.evaluate(SCRIPT, [gateway, content_type])
            return result
        finally:
            await browser.close()


async def test_foreign_page_cannot_spend_the_key_with_text_plain(
    make_gateway: MakeGateway, other_origin: str
) -> None:
    gateway = await make_gateway()
    for content_type in ("text/plain", "application/json"):
        with capture_logs() as logs:
            got = await run_in_page(other_origin, gateway, content_type)
        answered = [e["status"] for e in logs if e["event"] == "http_request"]
        assert answered, logs
        assert set(answered) == {403}, answered  # nothing was generated
        assert not [e for e in logs if e["event"] == "stream_finished"]
        # Refused: the script cannot read the answer (a CORS failure) and, for the
        # no-preflight text/plain request, the gateway answered 403 without a reply.
        assert "error" in got, got


async def test_listed_origin_gets_preflight_and_reply_in_chromium(
    make_gateway: MakeGateway, other_origin: str
) -> None:
    gateway = await make_gateway(cors_origins=[other_origin])
    got = await run_in_page(other_origin, gateway, "application/json")
    assert got.get("status") == 200, got
    assert got["id"] == "b-1"
    assert "chat.completion" in str(got["body"])
