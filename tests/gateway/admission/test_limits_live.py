"""Keys, limits and usage against a live gateway, through the real openai SDK.

The in-process store and a real redis-server; two gateway processes sharing one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from tests.support.fakes.openai_upstream import Behaviour, FakeOpenAIUpstream
from tests.support.gateway import GatewayProcess, MakeGateway
from tests.support.redis_server import RedisServer

KEY_A = "sk-team-a-7d1e0c2b9f"
KEY_B = "sk-team-b-41aa06e3cc"
ADMIN = "sk-admin-90c0ffee11"


def auth(**limits: Any) -> dict[str, Any]:
    """Two keys: team-a with ``limits``, team-b limited to fake-fast."""
    return {
        "keys": [
            {"name": "team-a", "key": KEY_A, **limits},
            {"name": "team-b", "key": KEY_B, "models": ["fake-fast"]},
        ],
        "admin_key": ADMIN,
    }


@pytest.fixture(params=["memory", "redis"])
def store_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The state store's settings: in process, or a real redis-server."""
    if request.param == "memory":
        return {}
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"redis_url": server.url}


def client(url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


async def tokens_of(url: str, key: str, **extra: Any) -> list[str]:
    async with client(url, key) as c:
        stream = await c.chat.completions.create(
            model=extra.pop("model", "fake-fast"),
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            **extra,
        )
        texts = [ch.choices[0].delta.content async for ch in stream if ch.choices]
        return [t for t in texts if t]


async def usage_of(url: str) -> dict[str, Any]:
    await asyncio.sleep(0.2)  # settles run in the background once each reply ends
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/v1/usage", headers={"Authorization": f"Bearer {ADMIN}"}) as r,
    ):
        assert r.status == 200
        body: dict[str, Any] = await r.json()
        return body["keys"]


async def test_missing_and_wrong_keys_are_401(make_gateway: MakeGateway) -> None:
    url = await make_gateway(auth=auth())
    for key in ("", "sk-wrong"):
        async with client(url, key or "none") as c:
            with pytest.raises(openai.AuthenticationError) as info:
                await c.chat.completions.create(
                    model="fake-fast", messages=[{"role": "user", "content": "x"}]
                )
        assert info.value.status_code == 401
        assert info.value.code == "invalid_api_key"
        assert info.value.type == "invalid_request_error"
    async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/models") as r:
        assert r.status == 401


async def test_x_api_key_header_is_accepted(make_gateway: MakeGateway) -> None:
    url = await make_gateway(auth=auth())
    body = {"model": "fake-fast", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", json=body, headers={"x-api-key": KEY_A}) as r,
    ):
        assert r.status == 200


async def test_model_not_allowed_is_403_and_models_are_filtered(make_gateway: MakeGateway) -> None:
    url = await make_gateway(auth=auth())
    async with client(url, KEY_B) as c:
        with pytest.raises(openai.PermissionDeniedError) as info:
            await c.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": "x"}]
            )
        assert info.value.code == "model_not_allowed"
        listed = [m.id async for m in c.models.list()]
    assert listed == ["fake-fast"]
    async with client(url, KEY_A) as c:
        assert {m.id async for m in c.models.list()} == {"fake", "fake-fast"}


async def test_rpm_refuses_with_openai_headers(
    make_gateway: MakeGateway, store_settings: dict[str, Any]
) -> None:
    url = await make_gateway(auth=auth(rpm=2), **store_settings)
    async with client(url, KEY_A) as c:
        for _ in range(2):
            raw = await c.chat.completions.with_raw_response.create(
                model="fake-fast", messages=[{"role": "user", "content": "x"}], max_tokens=2
            )
            assert raw.headers["x-ratelimit-limit-requests"] == "2"
            assert int(raw.headers["x-ratelimit-remaining-requests"]) < 2
            assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
        with pytest.raises(openai.RateLimitError) as info:
            await c.chat.completions.create(
                model="fake-fast", messages=[{"role": "user", "content": "x"}], max_tokens=2
            )
    error = info.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert 1 <= int(error.response.headers["Retry-After"]) <= 60
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"


@pytest.mark.parametrize("first_token_ms", [0, 700], ids=["with-the-first-token", "by-a-ping"])
async def test_a_stream_sends_its_rate_limit_headers_however_it_opens(
    make_gateway: MakeGateway, store_settings: dict[str, Any], first_token_ms: int
) -> None:
    """A streamed reply's ``x-ratelimit-*`` headers are made right before its headers
    go out: with its first token, or with a keep-alive ping sent while the upstream
    is still working on it."""
    url = await make_gateway(
        auth=auth(rpm=50, tpm=100_000), heartbeat_seconds=0.2, **store_settings
    )
    headers = {"Authorization": f"Bearer {KEY_A}"}
    body = {
        "model": "fake",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "max_tokens": 3,
        "fake": {"ttft_ms": first_token_ms},
    }
    async with aiohttp.ClientSession() as session:
        for expected in (49, 48):
            async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as r:
                assert r.status == 200
                assert r.headers["x-ratelimit-limit-requests"] == "50"
                assert r.headers["x-ratelimit-remaining-requests"] == str(expected)
                assert r.headers["x-ratelimit-limit-tokens"] == "100000"
                assert int(r.headers["x-ratelimit-remaining-tokens"]) < 100_000
                assert r.headers["x-ratelimit-reset-requests"].endswith("s")
                raw = await r.read()
            assert raw.rstrip().endswith(b"data: [DONE]")
            if first_token_ms:
                assert raw.startswith(b":")  # the ping opened the stream


async def test_max_streams_is_429_too_many_streams(
    make_gateway: MakeGateway, store_settings: dict[str, Any]
) -> None:
    url = await make_gateway(auth=auth(max_streams=1), **store_settings)
    async with client(url, KEY_A) as c:
        first = await c.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "x"}], stream=True
        )
        await anext(aiter(first))
        with pytest.raises(openai.RateLimitError) as info:
            await c.chat.completions.create(
                model="fake-fast", messages=[{"role": "user", "content": "x"}]
            )
        assert info.value.code == "too_many_streams"
        await first.close()


async def test_concurrent_requests_never_exceed_tpm(
    make_gateway: MakeGateway, store_settings: dict[str, Any]
) -> None:
    """20 at once against tpm 300: served tokens stay within the limit (reservations)."""
    url = await make_gateway(auth=auth(tpm=300), **store_settings)
    results = await asyncio.gather(
        *(tokens_of(url, KEY_A, max_tokens=40) for _ in range(20)), return_exceptions=True
    )
    served = [r for r in results if isinstance(r, list)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(served) + len(refused) == 20
    assert refused
    assert served
    usage = (await usage_of(url))["team-a"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= 300
    assert usage["completion_tokens"] == sum(len(r) for r in served)


async def test_budget_leaves_room_for_a_shorter_reply(
    make_gateway: MakeGateway, store_settings: dict[str, Any]
) -> None:
    """Admitted with less room than asked: the reply is capped (finish ``length``)."""
    url = await make_gateway(auth=auth(budget_tokens=100), **store_settings)
    first = await tokens_of(url, KEY_A, max_tokens=50, extra_body={"fake": {"reply_tokens": 50}})
    assert len(first) == 50
    async with client(url, KEY_A) as c:
        capped = await c.chat.completions.create(
            model="fake-fast",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=50,
            extra_body={"fake": {"reply_tokens": 50}},
        )
    assert capped.choices[0].finish_reason == "length"
    usage = (await usage_of(url))["team-a"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == 100
    async with client(url, KEY_A) as c:
        with pytest.raises(openai.RateLimitError) as info:
            await c.chat.completions.create(
                model="fake-fast", messages=[{"role": "user", "content": "x"}]
            )
    assert info.value.code == "insufficient_quota"


async def test_budget_runs_out_mid_stream_with_one_in_band_error(
    make_gateway: MakeGateway,
    store_settings: dict[str, Any],
) -> None:
    """An upstream that ignores max_tokens is cut when the budget is spent."""
    async with FakeOpenAIUpstream(Behaviour(tokens=300, delay=0.002)) as fake:
        route = {
            "name": "up",
            "provider": "openai",
            "base_url": fake.base_url,
            "retries": 0,
            "usage_count": "chunks",
        }
        url = await make_gateway(models=[route], auth=auth(budget_tokens=100), **store_settings)
        body = {"model": "up", "messages": [{"role": "user", "content": "x"}], "stream": True}
        headers = {"Authorization": f"Bearer {KEY_A}"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as r,
        ):
            assert r.status == 200
            raw = await r.read()
    events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert b"[DONE]" not in events
    last = orjson.loads(events[-1])
    assert last["error"]["code"] == "insufficient_quota"
    assert all(b'"finish_reason":"' not in e for e in events[:-1])
    delivered = len(events) - 2  # the role chunk and the error
    usage = (await usage_of(url))["team-a"]
    spent = usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] == delivered
    # At most one debit interval (16 tokens) past the budget.
    assert 100 <= spent <= 100 + 16


async def test_client_leaving_after_40_tokens_is_charged_40(
    make_gateway: MakeGateway, store_settings: dict[str, Any]
) -> None:
    url = await make_gateway(auth=auth(), **store_settings)
    body = {
        "model": "fake",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "fake": {"reply_tokens": 400, "tokens_per_second": 400, "ttft_ms": 0},
    }
    got = 0
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY_A}"}
        )
        async for line in response.content:
            if line.startswith(b'data: {"id"') and b'"content":"' in line and b'"role"' not in line:
                got += 1
                if got == 40:
                    break
        response.close()
    await asyncio.sleep(0.5)
    usage = (await usage_of(url))["team-a"]
    # Tokens sent before the close was seen may add a few: none are lost, none doubled.
    assert 40 <= usage["completion_tokens"] <= 48
    assert usage["requests"] == 1
    assert usage["by_model"]["fake"]["completion_tokens"] == usage["completion_tokens"]


async def test_keys_never_reach_logs_or_error_bodies(make_gateway: MakeGateway) -> None:
    url = await make_gateway(auth=auth(rpm=1))
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await tokens_of(url, KEY_A, max_tokens=2)
        with pytest.raises(openai.RateLimitError) as info:
            await tokens_of(url, KEY_A, max_tokens=2)
        with pytest.raises(openai.AuthenticationError) as wrong:
            await tokens_of(url, KEY_A + "x", max_tokens=2)
    text = repr(logs) + str(info.value.body) + str(wrong.value.body)
    for secret in (KEY_A, KEY_B, ADMIN):
        assert secret not in text
    finished = [e for e in logs if e["event"] == "stream_finished"]
    assert finished[0]["key"] == "team-a"


async def test_usage_needs_the_admin_key(make_gateway: MakeGateway) -> None:
    url = await make_gateway(auth=auth())
    await tokens_of(url, KEY_A, max_tokens=3)
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": f"Bearer {KEY_A}"}):
            async with session.get(f"{url}/v1/usage", headers=headers) as r:
                assert r.status == 401
    usage = await usage_of(url)
    assert usage["team-a"]["requests"] == 1
    assert usage["team-a"]["completion_tokens"] == 3
    assert usage["team-a"]["remaining_budget"] is None


async def test_redis_outage_fails_closed_then_recovers(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    url = await make_gateway(auth=auth(rpm=100), redis_url=redis_server.url)
    assert await tokens_of(url, KEY_A, max_tokens=2)
    redis_server.stop()
    async with client(url, KEY_A) as c:
        with pytest.raises(openai.InternalServerError) as info:
            await c.chat.completions.create(
                model="fake-fast", messages=[{"role": "user", "content": "x"}]
            )
    assert info.value.status_code == 503
    assert info.value.code == "limits_unavailable"
    redis_server.start()
    assert await tokens_of(url, KEY_A, max_tokens=2)
    usage = (await usage_of(url))["team-a"]
    assert usage["requests"] == 1  # a fresh, empty Redis: only what came after


async def test_fail_open_key_is_admitted_when_redis_is_down(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    url = await make_gateway(auth=auth(rpm=100, fail_open=True), redis_url=redis_server.url)
    redis_server.stop()
    assert await tokens_of(url, KEY_A, max_tokens=2)


async def test_two_gateways_on_one_redis_share_one_rpm(
    gateway_process: Any, redis_server: RedisServer, tmp_path: Any
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(orjson.dumps({"auth": auth(rpm=4), "redis_url": redis_server.url}).decode())
    one: GatewayProcess = gateway_process("--config", str(config))
    two: GatewayProcess = gateway_process("--config", str(config))
    outcomes: list[str] = []
    for i in range(6):
        url = (one if i % 2 else two).url
        try:
            await tokens_of(url, KEY_A, max_tokens=2)
            outcomes.append("ok")
        except openai.RateLimitError:
            outcomes.append("429")
    assert outcomes == ["ok", "ok", "ok", "ok", "429", "429"]
    usage = await usage_of(one.url)
    assert usage["team-a"]["requests"] == 4


def test_open_relay_is_refused(gateway_process: Any, tmp_path: Any) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "models:\n  - {name: up, provider: openai, base_url: 'http://127.0.0.1:9/v1', "
        "api_key: sk-upstream-secret}\n"
    )
    proc = GatewayProcess("--config", str(config), "--host", "0.0.0.0")
    code, logs = proc.stop() if proc.proc.wait(timeout=30) is not None else (None, "")
    assert code == 2
    assert "refusing to serve 0.0.0.0 with no API keys" in logs
    assert "TOKENPIPE_ALLOW_UNAUTHENTICATED=1" in logs
    assert "sk-upstream-secret" not in logs
    allowed = GatewayProcess(
        "--config", str(config), "--host", "0.0.0.0", env={"TOKENPIPE_ALLOW_UNAUTHENTICATED": "1"}
    )
    try:
        allowed.wait_ready()
    finally:
        code, _ = allowed.stop()
    assert code == 0


def test_workers_with_limits_need_redis(tmp_path: Any) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(orjson.dumps({"auth": auth(rpm=5), "workers": 2}).decode())
    proc = GatewayProcess("--config", str(config))
    proc.proc.wait(timeout=30)
    code, logs = proc.stop()
    assert code == 2
    assert "no redis_url" in logs
