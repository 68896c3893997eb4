"""The reply log in a real redis-server, shared by gateway processes."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import aiohttp
import orjson
from redis.asyncio import Redis

from tests.gateway.http.test_resume import resume, text_of
from tests.support.gateway import GatewayProcess, MakeGateway
from tests.support.redis_server import RedisServer
from tests.support.redis_server import redis_server as redis_server  # the fixture
from tests.support.sse_client import chat, parse_stream, stream_request


class _Started:
    """A stream POSTed and read up to its first event; ``close()`` drops the connection."""

    async def open(self, url: str, body: dict[str, object]) -> _Started:
        self.session = aiohttp.ClientSession()
        self.resp = await self.session.post(f"{url}/v1/chat/completions", json=body)
        assert self.resp.status == 200
        line = await self.resp.content.readuntil(b"\n\n")
        self.reply_id: str = orjson.loads(line.split(b"data: ")[1])["id"]
        self.token = self.resp.headers["X-Resume-Token"]
        return self

    async def close(self) -> None:
        self.resp.close()
        await self.session.close()


async def test_resume_at_every_position_through_redis(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    url = await make_gateway(redis_url=redis_server.url)
    body = chat("Say hi", max_tokens=3, seed=7, stream_options={"include_usage": True})
    full = await stream_request(url, body)
    reply_id, token = full.chunks[0]["id"], full.headers["X-Resume-Token"]
    for after in range(len(full.data)):
        got = await resume(url, reply_id, token, after)
        assert got.data == full.data[after:], after
        assert got.ids == list(range(after + 1, len(full.data) + 1))
    assert (await resume(url, reply_id, token, len(full.data))).status == 204
    redis = Redis.from_url(redis_server.url)
    try:
        keys = sorted(k.decode() for k in await redis.keys("*"))
        assert keys == [
            f"tokenpipe:reply:{{{reply_id}}}:log",
            f"tokenpipe:reply:{{{reply_id}}}:meta",
        ]
        for key in keys:
            assert 0 < await redis.ttl(key) <= 300
    finally:
        await redis.aclose()


async def test_create_on_one_replica_resume_on_another(
    gateway_process: Callable[..., GatewayProcess], redis_server: RedisServer
) -> None:
    env = {"TOKENPIPE_REDIS_URL": redis_server.url}
    one, two = gateway_process(env=env), gateway_process(env=env)
    body = chat("Tell me about replicas", seed=3, max_tokens=80)
    body["model"] = "fake"
    expected = (await stream_request(one.url, body)).text
    started = await _Started().open(one.url, body)
    try:
        followed = await resume(two.url, started.reply_id, started.token, 0)
    finally:
        await started.close()
    assert followed.data[-1] == "[DONE]"
    assert text_of(followed.data) == expected
    assert followed.ids == list(range(1, len(followed.data) + 1))


async def test_readers_learn_of_a_killed_producer_in_time(
    gateway_process: Callable[..., GatewayProcess], redis_server: RedisServer
) -> None:
    env = {"TOKENPIPE_REDIS_URL": redis_server.url}
    producer, other = gateway_process(env=env), gateway_process(env=env)
    body = chat("A long answer please", seed=4)
    body["model"] = "fake"
    body["background"] = True
    started = await _Started().open(producer.url, body)
    await started.close()
    reader = asyncio.create_task(resume(other.url, started.reply_id, started.token, 0))
    await asyncio.sleep(0.5)
    producer.proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    got = await asyncio.wait_for(reader, timeout=15)
    took = time.monotonic() - killed_at
    print(f"reader told of the dead producer after {took:.2f} s")
    assert took < 10
    error = orjson.loads(got.data[-1])
    assert error["error"]["code"] == "reply_lost"
    assert [d for d in got.data if '"error"' in d] == [got.data[-1]]
    assert "[DONE]" not in got.data


async def test_cancel_on_another_replica(
    gateway_process: Callable[..., GatewayProcess], redis_server: RedisServer
) -> None:
    env = {"TOKENPIPE_REDIS_URL": redis_server.url}
    one, two = gateway_process(env=env), gateway_process(env=env)
    body = chat("A long answer please", seed=4)
    body["model"] = "fake"
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{one.url}/v1/chat/completions", json=body)
        token = resp.headers["X-Resume-Token"]
        first = orjson.loads((await resp.content.readuntil(b"\n\n")).split(b"data: ")[1])
        cancelled_at = time.monotonic()
        async with session.post(
            f"{two.url}/v1/chat/completions/{first['id']}/cancel",
            headers={"X-Resume-Token": token},
        ) as cancel:
            assert cancel.status == 200
        data, _, _, _ = parse_stream(await resp.read())
        took = time.monotonic() - cancelled_at
        resp.close()
    assert orjson.loads(data[-1])["error"]["code"] == "cancelled"
    assert took < 2


async def test_responses_cancel_on_another_replica_answers_the_cancelled_response(
    make_gateway: MakeGateway, redis_server: RedisServer
) -> None:
    one = await make_gateway(redis_url=redis_server.url)
    two = await make_gateway(redis_url=redis_server.url)
    body = {
        "model": "fake",
        "input": "A long answer please",
        "stream": True,
        "background": True,
        "fake": {"reply_tokens": 100_000, "tokens_per_second": 100},
    }
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{one}/v1/responses", json=body)
        token = resp.headers["X-Resume-Token"]
        first = (await resp.content.readuntil(b"\n\n")).split(b"data: ")[1]
        response_id = orjson.loads(first)["response"]["id"]
        await asyncio.sleep(0.2)
        async with session.post(
            f"{two}/v1/responses/{response_id}/cancel", headers={"X-Resume-Token": token}
        ) as cancel:
            assert cancel.status == 200
            cancelled = await cancel.json()
        raw = await resp.read()
        resp.close()
    last = orjson.loads(raw.rstrip(b"\n").rsplit(b"\n", 1)[1].removeprefix(b"data: "))
    assert cancelled["status"] == "cancelled"
    assert cancelled["object"] == "response"
    assert last["type"] == "response.failed"
    assert last["response"] == cancelled
    assert raw.count(b"event: response.failed") == 1
