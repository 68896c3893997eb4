"""With Redis, admission runs while the upstream starts, once a key has shown room.

The round trip to Redis then costs no time to first token: the relay waits for the
answer only before its first byte. A refusal found that way is the same 429 as
before, and the upstream request it started is cancelled; a reservation whose
reply failed meanwhile is released.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import structlog
from structlog.testing import capture_logs

from tests.support.fakes.openai_upstream import Behaviour, FakeOpenAIUpstream
from tests.support.gateway import MakeGateway
from tests.support.redis_server import RedisServer

KEY = "sk-ahead-5b0e2f9a71"
HEADERS = {"Authorization": f"Bearer {KEY}"}
ADMIN = "sk-ahead-admin-33c1d0"


#: The reply log stays in process (``resumable: false``): creating a Redis reply log
#: is a round trip of its own, before the upstream starts (not admission's).
LOG_OFF = {"resumable": False}


def _auth(**limits: Any) -> dict[str, Any]:
    return {"keys": [{"name": "team-a", "key": KEY, **limits}]}


def _route(fake: FakeOpenAIUpstream) -> dict[str, Any]:
    return {"name": "up", "provider": "openai", "base_url": fake.base_url, "retries": 0}


async def _gateway(
    make_gateway: MakeGateway, fake: FakeOpenAIUpstream, redis: RedisServer, **limits: Any
) -> str:
    return await make_gateway(
        models=[_route(fake)], auth=_auth(**limits), redis_url=redis.url, **LOG_OFF
    )


BODY = {"model": "up", "messages": [{"role": "user", "content": "x"}], "stream": True}


async def _post(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], bytes]:
    async with session.post(f"{url}/v1/chat/completions", json=BODY, headers=HEADERS) as r:
        return r.status, dict(r.headers), await r.read()


async def _upstream_sees(fake: FakeOpenAIUpstream, count: int, within: float) -> bool:
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        if len(fake.requests) >= count:
            return True
        await asyncio.sleep(0.01)
    return len(fake.requests) >= count


async def test_the_upstream_starts_before_redis_answers_once_the_key_has_room(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=3)) as fake:
        url = await _gateway(make_gateway, fake, redis_server, rpm=100)
        async with aiohttp.ClientSession() as session:
            # The key's first request waits for Redis before reaching the upstream.
            redis_server.pause()
            first = asyncio.ensure_future(_post(session, url))
            try:
                assert not await _upstream_sees(fake, 1, within=0.3)
            finally:
                redis_server.resume()
            status, headers, _ = await first
            assert status == 200
            assert headers["x-ratelimit-remaining-requests"] == "99"

            # It left room: the next one reaches the upstream while Redis is frozen,
            # and its first byte (with the admission's headers) waits for the answer.
            redis_server.pause()
            second = asyncio.ensure_future(_post(session, url))
            try:
                assert await _upstream_sees(fake, 2, within=0.5)
                await asyncio.sleep(0.1)
                assert not second.done()
            finally:
                redis_server.resume()
            status, headers, raw = await second
    assert status == 200
    assert headers["x-ratelimit-remaining-requests"] == "98"
    assert raw.endswith(b"data: [DONE]\n\n")


async def test_a_refusal_found_while_the_upstream_started_is_a_429_and_cancels_it(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    """Two gateways share one rpm: the second spends what the first saw as room."""
    async with FakeOpenAIUpstream(Behaviour(tokens=200, delay=0.01)) as fake:
        first_url = await _gateway(make_gateway, fake, redis_server, rpm=4)
        other_url = await _gateway(make_gateway, fake, redis_server, rpm=4)
        async with aiohttp.ClientSession() as session:
            fake.script = [Behaviour(tokens=2)]
            status, headers, _ = await _post(session, first_url)
            assert (status, headers["x-ratelimit-remaining-requests"]) == (200, "3")
            for _ in range(3):
                status, _, _ = await _post(session, other_url)
                assert status == 200
            fake.script = [Behaviour(tokens=200, delay=0.01)]
            # first_url last saw 3 left: it admits ahead, and Redis says no.
            status, headers, raw = await _post(session, first_url)
    assert status == 429
    error = orjson.loads(raw)["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert len(fake.requests) == 5
    # The upstream request it had started is closed at once, not streamed to its end.
    await fake.wait_closed(-1, timeout=1.0)


async def test_a_reply_that_fails_while_admission_is_in_flight_releases_its_stream(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=2)) as fake:
        url = await _gateway(make_gateway, fake, redis_server, max_streams=1)
        async with aiohttp.ClientSession() as session:
            assert (await _post(session, url))[0] == 200
            await asyncio.sleep(0.2)  # its settle lands (the client may see [DONE] first)
            # Ahead now: the upstream refuses before Redis answers.
            fake.script = [Behaviour(status=500)]
            redis_server.pause()
            failing = asyncio.ensure_future(_post(session, url))
            try:
                assert await _upstream_sees(fake, 2, within=0.5)
                await asyncio.sleep(0.05)
            finally:
                redis_server.resume()
            status, _, raw = await failing
            assert status == 502, raw
            # Its reservation was settled: the key's one stream is free again.
            fake.script = [Behaviour(tokens=2)]
            await asyncio.sleep(0.2)
            status, _, raw = await _post(session, url)
    assert status == 200, raw


async def test_in_process_a_refusal_found_after_the_upstream_started_is_a_429_and_closes_it(
    make_gateway: MakeGateway,
) -> None:
    """The in-process store answers at once, inline once the upstream started (no
    task): max_streams, which the store does not report as room, refuses."""
    async with FakeOpenAIUpstream(Behaviour(tokens=400, delay=0.01)) as fake:
        url = await make_gateway(models=[_route(fake)], auth=_auth(max_streams=1), **LOG_OFF)
        async with aiohttp.ClientSession() as session:
            fake.script = [Behaviour(tokens=2)]
            assert (await _post(session, url))[0] == 200  # the key showed room
            fake.script = [Behaviour(tokens=400, delay=0.01)]
            async with session.post(
                f"{url}/v1/chat/completions", json=BODY, headers=HEADERS
            ) as open_stream:
                assert open_stream.status == 200
                await open_stream.content.readline()
                status, headers, raw = await _post(session, url)
                # The upstream started ahead is dropped: cancelled before its request
                # went out, or closed at once (never streamed to its end).
                if await _upstream_sees(fake, 3, within=0.3):
                    await fake.wait_closed(-1, timeout=1.0)
                assert len(fake.requests) <= 3
                assert not fake.requests[1].closed.is_set()  # the open stream goes on
                assert b"data: " in await open_stream.content.readline() + (
                    await open_stream.content.readline()
                )
    assert status == 429
    assert orjson.loads(raw)["error"]["code"] == "too_many_streams"
    assert headers["Retry-After"] == "1"
    assert "x-ratelimit-limit-requests" not in headers  # no rpm on this key


async def test_in_process_a_stream_admitted_ahead_carries_the_admission_headers(
    make_gateway: MakeGateway,
) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=3)) as fake:
        url = await make_gateway(models=[_route(fake)], auth=_auth(rpm=100), **LOG_OFF)
        async with aiohttp.ClientSession() as session:
            seen = [await _post(session, url) for _ in range(3)]
    assert [s for s, _, _ in seen] == [200, 200, 200]
    assert [h["x-ratelimit-remaining-requests"] for _, h, _ in seen] == ["99", "98", "97"]
    assert all(raw.endswith(b"data: [DONE]\n\n") for _, _, raw in seen)


async def test_a_refusal_found_ahead_ends_as_rejected_not_as_an_upstream_error(
    make_gateway: MakeGateway,
) -> None:
    """Regression: a key's refusal found while the upstream started ahead was recorded
    as ``upstream_error`` (stream_finished and the metrics' error_type)."""
    async with FakeOpenAIUpstream(Behaviour(tokens=400, delay=0.01)) as fake:
        auth = {**_auth(max_streams=1), "admin_key": ADMIN}
        url = await make_gateway(models=[_route(fake)], auth=auth, **LOG_OFF)
        async with aiohttp.ClientSession() as session:
            fake.script = [Behaviour(tokens=2)]
            assert (await _post(session, url))[0] == 200
            fake.script = [Behaviour(tokens=400, delay=0.01)]
            async with session.post(
                f"{url}/v1/chat/completions", json=BODY, headers=HEADERS
            ) as open_stream:
                await open_stream.content.readline()
                with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
                    assert (await _post(session, url))[0] == 429
            admin = {"Authorization": f"Bearer {ADMIN}"}
            async with session.get(f"{url}/metrics", headers=admin) as r:
                exposition = await r.text()
    finished = [e for e in logs if e["event"] == "stream_finished"]
    assert [e["reason"] for e in finished] == ["rejected"]
    assert 'error_type="rate_limited"' in exposition
    assert 'error_type="upstream_error"' not in exposition
