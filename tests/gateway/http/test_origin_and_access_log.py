"""Host allow-list, CORS and the access log, against a live gateway."""

from __future__ import annotations

import aiohttp
import orjson
from structlog.testing import capture_logs

from tests.conftest import MakeGateway
from tests.support.sse_client import chat

BODY = orjson.dumps(chat(stream=False, max_tokens=2))


async def test_text_plain_post_from_a_foreign_origin_is_refused(gateway_url: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway_url}/v1/chat/completions",
            data=BODY,
            headers={"Content-Type": "text/plain", "Origin": "http://evil.example"},
        ) as resp,
    ):
        assert resp.status == 403
        error = (await resp.json())["error"]
        assert error["code"] == "origin_not_allowed"
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_dns_rebinding_host_is_refused(gateway_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/v1/models", "/healthz"):
            async with session.get(
                f"{gateway_url}{path}", headers={"Host": "evil.example:8080"}
            ) as resp:
                assert resp.status == 403
                assert (await resp.json())["error"]["code"] == "host_not_allowed"
        for host in ("localhost:1", "127.0.0.1", "[::1]:8080"):
            async with session.get(f"{gateway_url}/healthz", headers={"Host": host}) as resp:
                assert resp.status == 200, host


async def test_allowed_hosts_extends_the_loopback_names(make_gateway: MakeGateway) -> None:
    url = await make_gateway(allowed_hosts=["gw.internal"])
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/healthz", headers={"Host": "gw.internal:80"}) as resp,
    ):
        assert resp.status == 200


async def test_options_preflight_was_a_405_now_204_for_listed_origins(
    make_gateway: MakeGateway,
) -> None:
    url = await make_gateway(cors_origins=["http://app.example"])
    preflight = {
        "Origin": "http://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with aiohttp.ClientSession() as session:
        async with session.options(f"{url}/v1/chat/completions", headers=preflight) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "http://app.example"
            allowed = resp.headers["Access-Control-Allow-Headers"].lower()
            for name in ("authorization", "content-type", "x-request-id", "x-api-key"):
                assert name in allowed
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
            assert int(resp.headers["Access-Control-Max-Age"]) > 0
        other = {**preflight, "Origin": "http://other.example"}
        async with session.options(f"{url}/v1/chat/completions", headers=other) as resp:
            assert resp.status == 403
        async with session.post(
            f"{url}/v1/chat/completions",
            data=orjson.dumps(chat(max_tokens=2)),
            headers={"Origin": "http://app.example", "Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "http://app.example"
            assert "X-Request-ID" in resp.headers["Access-Control-Expose-Headers"]
            await resp.read()


async def test_4xx_left_no_trace_now_one_access_log_line_each(gateway_url: str) -> None:
    with capture_logs() as logs:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{gateway_url}/healthz?api_key=secret") as resp:
                assert resp.status == 200
            async with session.get(f"{gateway_url}/nope") as resp:
                assert resp.status == 404
            async with session.put(f"{gateway_url}/v1/chat/completions") as resp:
                assert resp.status == 405
            async with session.post(
                f"{gateway_url}/v1/chat/completions",
                data=b"{",
                headers={"Authorization": "Bearer sk-secret", "X-Request-ID": "r-400"},
            ) as resp:
                assert resp.status == 400
            async with session.post(
                f"{gateway_url}/v1/chat/completions",
                data=orjson.dumps(chat("a prompt text", max_tokens=2)),
            ) as resp:
                assert resp.status == 200
                await resp.read()
    lines = [e for e in logs if e["event"] == "http_request"]
    assert [(e["method"], e["path"], e["status"]) for e in lines] == [
        ("GET", "/healthz", 200),
        ("GET", "/nope", 404),
        ("PUT", "/v1/chat/completions", 405),
        ("POST", "/v1/chat/completions", 400),
        ("POST", "/v1/chat/completions", 200),
    ]
    for entry in lines:
        assert entry["client"] == "127.0.0.1"
        assert entry["duration_ms"] >= 0
        assert entry["request_id"]
        assert entry["bytes"] > 0
    assert lines[3]["request_id"] == "r-400"
    text = repr(lines)
    assert "secret" not in text
    assert "a prompt text" not in text
