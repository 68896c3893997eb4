"""Resumable replies: SSE ids, Last-Event-ID resume, background replies, cancel."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
from openai import AsyncOpenAI

from tests.support.fakes.openai_upstream import Behaviour, FakeOpenAIUpstream
from tests.support.gateway import MakeGateway
from tests.support.sse_client import Captured, chat, parse_stream, stream_request


async def resume(
    url: str,
    reply_id: str,
    token: str | None,
    after: int | None = None,
    *,
    query: dict[str, str] | None = None,
) -> Captured:
    """``GET /v1/chat/completions/{id}?stream=true`` with ``Last-Event-ID: after``."""
    headers = {} if token is None else {"X-Resume-Token": token}
    if after is not None:
        headers["Last-Event-ID"] = str(after)
    params = {"stream": "true", **(query or {})}
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{url}/v1/chat/completions/{reply_id}", headers=headers, params=params
        ) as resp,
    ):
        raw = await resp.read()
        got = Captured(resp.status, dict(resp.headers), raw)
        if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            got.data, got.comments, got.ids, got.retries = parse_stream(raw)
        return got


async def fetch(url: str, reply_id: str, token: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{url}/v1/chat/completions/{reply_id}", headers={"X-Resume-Token": token}
        ) as resp,
    ):
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


def text_of(data: list[str]) -> str:
    out = []
    for item in data:
        if item == "[DONE]":
            continue
        chunk = orjson.loads(item)
        for choice in chunk.get("choices", []):
            out.append(choice["delta"].get("content") or "")
    return "".join(out)


async def test_every_event_has_an_id_and_the_stream_a_retry(gateway_url: str) -> None:
    got = await stream_request(gateway_url, chat(max_tokens=5))
    assert got.ids == list(range(1, len(got.data) + 1))
    assert got.retries == [1000]
    assert got.raw.startswith(b"retry: 1000\nid: 1\ndata: ")
    assert len(got.headers["X-Resume-Token"]) >= 22


async def test_resume_at_every_position_of_a_short_reply(gateway_url: str) -> None:
    body = chat("Say hi", max_tokens=3, seed=7, stream_options={"include_usage": True})
    full = await stream_request(gateway_url, body)
    reply_id = full.chunks[0]["id"]
    token = full.headers["X-Resume-Token"]
    events = len(full.data)
    assert events == 7  # role, 3 tokens, finish, usage, [DONE]
    for after in range(events):
        got = await resume(gateway_url, reply_id, token, after)
        assert got.status == 200, after
        assert got.data == full.data[after:], after
        assert got.ids == list(range(after + 1, events + 1)), after
        assert got.retries == [1000]
        # Byte for byte: the resumed events are the original's (the retry line aside).
        assert got.raw.replace(b"retry: 1000\n", b"", 1) in full.raw
    done = await resume(gateway_url, reply_id, token, events)
    assert done.status == 204
    via_query = await resume(gateway_url, reply_id, token, query={"starting_after": "4"})
    assert via_query.data == full.data[4:]


async def test_unknown_wrong_token_or_expired_is_404(make_gateway: MakeGateway) -> None:
    url = await make_gateway(resume_ttl_seconds=0.3)
    full = await stream_request(url, chat(max_tokens=2))
    reply_id, token = full.chunks[0]["id"], full.headers["X-Resume-Token"]
    for rid, tok in ((reply_id, "wrong"), (reply_id, None), ("chatcmpl-nope", token)):
        got = await resume(url, rid, tok, 0)
        assert got.status == 404
        assert orjson.loads(got.raw)["error"]["code"] == "reply_not_found"
    assert (await resume(url, reply_id, token, 0)).status == 200
    await asyncio.sleep(0.5)
    assert (await resume(url, reply_id, token, 0)).status == 404


async def test_sdk_cut_mid_reply_then_resume_is_exactly_once(make_gateway: MakeGateway) -> None:
    url = await make_gateway(detach_grace_seconds=10)
    messages = [{"role": "user", "content": "Tell me about resumable streams"}]
    async with AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        whole = await client.chat.completions.create(
            model="fake", messages=messages, seed=21, stream=True, max_tokens=60
        )
        uninterrupted = "".join([c.choices[0].delta.content or "" async for c in whole])
        stream = await client.chat.completions.create(
            model="fake", messages=messages, seed=21, stream=True, max_tokens=60
        )
        token = stream.response.headers["X-Resume-Token"]
        before: list[str] = []
        reply_id = ""
        read = 0
        async for chunk in stream:
            reply_id = chunk.id
            read += 1  # one chunk per SSE event: its id is the count so far
            before.append(chunk.choices[0].delta.content or "")
            if read == 12:
                break
        await stream.response.aclose()  # the connection is gone mid-reply
    got = await resume(url, reply_id, token, read)
    assert got.status == 200
    assert got.ids[0] == read + 1
    assert got.data[-1] == "[DONE]"
    assert "".join(before) + text_of(got.data) == uninterrupted
    assert len(uninterrupted) > 100


async def test_resumed_reader_follows_the_live_reply(make_gateway: MakeGateway) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=40, delay=0.02)) as fake:
        url = await make_gateway(models=[_model(fake.base_url)])
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"{url}/v1/chat/completions", json=_BODY)
            token = resp.headers["X-Resume-Token"]
            first = orjson.loads((await resp.content.readuntil(b"\n\n")).split(b"data: ")[1])
            reply_id = first["id"]
            follower = asyncio.create_task(resume(url, reply_id, token, 0))
            original = await resp.read()
        followed = await follower
    data, _, _, _ = parse_stream(original)
    assert followed.data[1:] == data
    assert followed.data[-1] == "[DONE]"


async def test_background_reply_runs_without_its_client(make_gateway: MakeGateway) -> None:
    url = await make_gateway()
    body = chat("Background please", seed=5, max_tokens=40, stream=False, background=True)
    body["model"] = "fake"
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            started = await resp.json()
            token = resp.headers["X-Resume-Token"]
        assert started["status"] == "in_progress"
        assert started["object"] == "chat.completion"
        assert (await fetch(url, started["id"], token))["status"] == "in_progress"
        deadline = time.monotonic() + 30
        while (done := await fetch(url, started["id"], token))["status"] == "in_progress":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        plain = {**body, "background": False}
        async with session.post(f"{url}/v1/chat/completions", json=plain) as resp:
            expected = await resp.json()
    assert done["status"] == "completed"
    assert done["id"] == started["id"]
    assert done["choices"][0]["message"]["content"] == expected["choices"][0]["message"]["content"]
    assert done["usage"] == expected["usage"]


async def test_background_stream_outlives_a_disconnect(make_gateway: MakeGateway) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=30, delay=0.02)) as fake:
        url = await make_gateway(models=[_model(fake.base_url)])
        async with aiohttp.ClientSession() as session:
            resp = await session.post(
                f"{url}/v1/chat/completions", json={**_BODY, "background": True}
            )
            token = resp.headers["X-Resume-Token"]
            first = orjson.loads((await resp.content.readuntil(b"\n\n")).split(b"data: ")[1])
            resp.close()
        got = await resume(url, first["id"], token, 0)
        assert fake.requests[-1].closed_at is None  # ran to its end
    assert got.data[-1] == "[DONE]"
    assert text_of(got.data) == "".join(
        ["Hello", " world", ",", " héllo", " tokens", " stream", " 🙂", ".", " The", " end"] * 3
    )


async def test_cancel_stops_the_upstream_and_tells_every_reader(make_gateway: MakeGateway) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=100_000, delay=0.01)) as fake:
        url = await make_gateway(models=[_model(fake.base_url)])
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"{url}/v1/chat/completions", json=_BODY)
            token = resp.headers["X-Resume-Token"]
            first = orjson.loads((await resp.content.readuntil(b"\n\n")).split(b"data: ")[1])
            reader = asyncio.create_task(resume(url, first["id"], token, 0))
            await asyncio.sleep(0.2)
            cancelled_at = time.monotonic()
            async with session.post(
                f"{url}/v1/chat/completions/{first['id']}/cancel", params={"token": token}
            ) as cancel:
                assert cancel.status == 200
                assert (await cancel.json())["status"] == "cancelled"
            closed_at = await fake.wait_closed(timeout=5)
            original, _, _, _ = parse_stream(await resp.read())
        resumed = await reader
    print(f"upstream closed {(closed_at - cancelled_at) * 1000:.1f} ms after the cancel")
    assert closed_at - cancelled_at < 0.1
    for data in (original, resumed.data):
        errors = [orjson.loads(d) for d in data if '"error"' in d]
        assert len(errors) == 1
        assert errors[0]["error"]["code"] == "cancelled"
        assert data[-1] != "[DONE]"
        assert orjson.loads(data[-1]) == errors[0]


def _model(base_url: str) -> dict[str, Any]:
    return {"name": "up", "provider": "openai", "base_url": base_url, "api_key": "k"}


_BODY = {"model": "up", "messages": [{"role": "user", "content": "x"}], "stream": True}
