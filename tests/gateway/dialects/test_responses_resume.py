"""``GET /v1/responses/{id}?stream=true&starting_after=N`` and ``POST .../cancel``, with the SDK.

``starting_after`` is a ``sequence_number`` (OpenAI's meaning), and each event's
SSE ``id`` is its ``sequence_number``, so ``Last-Event-ID`` resumes at the same place.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.support.fakes.openai_upstream import Behaviour, FakeOpenAIUpstream
from tests.support.gateway import MakeGateway

PROMPT = "Tell me about resumable streams"
FAKE = {"reply_tokens": 40, "tokens_per_second": 0, "ttft_ms": 0}
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
TERMINAL = {"response.completed", "response.incomplete", "response.failed", "error"}


def sdk(url: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def text_of(events: list[ResponseStreamEvent]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


async def events_of(
    client: AsyncOpenAI, response_id: str, token: str, **query: Any
) -> list[ResponseStreamEvent]:
    stream = await client.responses.retrieve(
        response_id, stream=True, extra_headers={"X-Resume-Token": token}, **query
    )
    return [event async for event in stream]


async def finished_background(client: AsyncOpenAI, **fake: Any) -> tuple[Response, str]:
    """A background response run to its end, and its read token."""
    raw = await client.responses.with_raw_response.create(
        model="fake",
        input=PROMPT,
        background=True,
        extra_body={"seed": 21, "fake": {**FAKE, **fake}},
    )
    started, token = raw.parse(), raw.headers["X-Resume-Token"]
    deadline = time.monotonic() + 30
    done = started
    while done.status == "in_progress":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
        done = await client.responses.retrieve(started.id, extra_headers={"X-Resume-Token": token})
    return done, token


async def test_starting_after_is_a_sequence_number_and_resumes_exactly_once(
    make_gateway: MakeGateway,
) -> None:
    url = await make_gateway()
    async with sdk(url) as client:
        direct = await client.responses.create(
            model="fake", input=PROMPT, stream=True, extra_body={"seed": 21, "fake": FAKE}
        )
        uninterrupted = text_of([event async for event in direct])
        done, token = await finished_background(client)
        whole = await events_of(client, done.id, token)
        numbers = [e.sequence_number for e in whole]
        assert numbers == list(range(len(whole)))
        assert text_of(whole) == uninterrupted == done.output_text
        assert len(uninterrupted) > 100
        last = numbers[-1]
        for after in (0, 1, 3, last // 2, last - 1):
            resumed = await events_of(client, done.id, token, starting_after=after)
            assert resumed[0].sequence_number == after + 1
            assert [e.model_dump() for e in resumed] == [e.model_dump() for e in whole[after + 1 :]]
            assert text_of(whole[: after + 1]) + text_of(resumed) == uninterrupted
            assert resumed[-1].type == "response.completed"
        for after in (last, last + 10):  # nothing left: 204, an empty stream to the SDK
            assert await events_of(client, done.id, token, starting_after=after) == []


async def test_last_event_id_and_starting_after_resume_at_the_same_event(
    make_gateway: MakeGateway,
) -> None:
    url = await make_gateway()
    async with sdk(url) as client:
        done, token = await finished_background(client)
    got: list[bytes] = []
    async with aiohttp.ClientSession() as session:
        for headers, params in (
            ({"Last-Event-ID": "7"}, {"stream": "true"}),
            ({}, {"stream": "true", "starting_after": "7"}),
        ):
            async with session.get(
                f"{url}/v1/responses/{done.id}",
                headers={"X-Resume-Token": token, **headers},
                params=params,
            ) as resp:
                assert resp.status == 200
                got.append(await resp.read())
        async with session.get(
            f"{url}/v1/responses/{done.id}",
            headers={"X-Resume-Token": token, "Last-Event-ID": "1000"},
            params={"stream": "true"},
        ) as resp:
            assert resp.status == 204
    assert got[0] == got[1]
    assert got[0].startswith(b'retry: 1000\nid: 8\nevent: response.output_text.delta\ndata: {"')
    assert b'"sequence_number":8,' in got[0].split(b"\n\n")[0]


async def test_a_live_background_stream_cut_mid_reply_resumes_exactly_once(
    make_gateway: MakeGateway,
) -> None:
    url = await make_gateway()
    knobs = {**FAKE, "tokens_per_second": 200}
    async with sdk(url) as client:
        direct = await client.responses.create(
            model="fake", input=PROMPT, stream=True, extra_body={"seed": 21, "fake": knobs}
        )
        uninterrupted = text_of([event async for event in direct])
        stream = await client.responses.create(
            model="fake",
            input=PROMPT,
            stream=True,
            background=True,
            extra_body={"seed": 21, "fake": knobs},
        )
        token = stream.response.headers["X-Resume-Token"]
        before: list[ResponseStreamEvent] = []
        async for event in stream:
            before.append(event)
            if len(before) == 12:
                break
        await stream.response.aclose()  # the connection is gone mid-reply
        assert before[0].type == "response.created"
        response_id = before[0].response.id
        after = before[-1].sequence_number
        resumed = await events_of(client, response_id, token, starting_after=after)
    assert after == 11
    assert resumed[0].sequence_number == after + 1
    assert resumed[-1].type == "response.completed"
    assert text_of(before) + text_of(resumed) == uninterrupted


async def test_cancel_stops_a_background_response_and_ends_every_stream_cancelled(
    make_gateway: MakeGateway,
) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=100_000, delay=0.01)) as fake:
        url = await make_gateway(models=[_model(fake.base_url)])
        async with sdk(url) as client:
            stream = await client.responses.create(
                model="up", input="x", stream=True, background=True
            )
            token = stream.response.headers["X-Resume-Token"]
            headers = {"X-Resume-Token": token}
            primary: list[ResponseStreamEvent] = []
            async for event in stream:
                primary.append(event)
                if event.type == "response.output_text.delta":
                    break
            assert primary[0].type == "response.created"
            response_id = primary[0].response.id
            reader = asyncio.create_task(events_of(client, response_id, token, starting_after=2))
            await asyncio.sleep(0.2)
            cancelled_at = time.monotonic()
            cancelled = await client.responses.cancel(response_id, extra_headers=headers)
            answered_at = time.monotonic()
            closed_at = await fake.wait_closed(timeout=5)
            primary.extend([event async for event in stream])
            resumed = await reader
            again = await client.responses.cancel(response_id, extra_headers=headers)
            fetched = await client.responses.retrieve(response_id, extra_headers=headers)
    print(f"upstream closed {(closed_at - cancelled_at) * 1000:.1f} ms after the cancel")
    # The gateway stops the upstream within milliseconds of the request (as with chat
    # completions), but the SDK's POST itself may take ~200 ms on loopback before the
    # gateway sees it: hence 1 s. By the answer, the upstream is closed (give or take
    # the fake noticing it).
    assert closed_at - cancelled_at < 1.0
    assert closed_at - answered_at < 0.05
    assert isinstance(cancelled, Response)
    assert cancelled.object == "response"
    assert cancelled.id == response_id
    assert cancelled.status == "cancelled"
    assert cancelled.background is True
    assert cancelled.error is None
    assert cancelled.output[0].status == "incomplete"
    assert cancelled.output_text
    assert cancelled.output_text == text_of(primary)
    for events in (primary, resumed):
        terminal = [e for e in events if e.type in TERMINAL]
        assert len(terminal) == 1
        assert terminal[0] is events[-1]
        assert terminal[0].type == "response.failed"
        assert terminal[0].response.model_dump() == cancelled.model_dump()
        EVENTS.validate_python(terminal[0].model_dump())  # strictly one of the SDK's events
    assert resumed[0].sequence_number == 3
    assert [e.model_dump() for e in resumed] == [e.model_dump() for e in primary[3:]]
    # Cancelling again, or fetching, gives the response as it ended.
    assert again.model_dump() == fetched.model_dump() == cancelled.model_dump()


async def test_cancel_of_a_finished_background_response_returns_it_as_it_ended(
    make_gateway: MakeGateway,
) -> None:
    url = await make_gateway()
    async with sdk(url) as client:
        done, token = await finished_background(client)
        cancelled = await client.responses.cancel(done.id, extra_headers={"X-Resume-Token": token})
    assert done.status == "completed"
    assert cancelled.model_dump() == done.model_dump()


async def test_cancel_of_a_response_made_without_background_is_a_bad_request(
    make_gateway: MakeGateway,
) -> None:
    url = await make_gateway()
    async with sdk(url) as client:
        stream = await client.responses.create(
            model="fake", input=PROMPT, stream=True, extra_body={"fake": FAKE}
        )
        token = stream.response.headers["X-Resume-Token"]
        events = [event async for event in stream]
        assert events[0].type == "response.created"
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.cancel(
                events[0].response.id, extra_headers={"X-Resume-Token": token}
            )
    assert "background" in refused.value.message


async def test_cancel_of_an_unknown_id_is_not_found(make_gateway: MakeGateway) -> None:
    url = await make_gateway()
    async with sdk(url) as client:
        done, token = await finished_background(client)
        chat = await client.chat.completions.with_raw_response.create(
            model="fake", messages=[{"role": "user", "content": "x"}], stream=True
        )
        chat_id = (await anext(aiter(chat.parse()))).id
        chat_token = chat.headers["X-Resume-Token"]
        for response_id, read_token in (
            ("resp_nope", token),  # unknown
            (done.id, "wrong"),  # a wrong read token
            (chat_id, chat_token),  # a chat completion is no Responses reply
        ):
            with pytest.raises(openai.NotFoundError) as missing:
                await client.responses.cancel(
                    response_id, extra_headers={"X-Resume-Token": read_token}
                )
            body = missing.value.body
            assert isinstance(body, dict)
            assert body["code"] == "reply_not_found"
            assert body["type"] == "invalid_request_error"


def _model(base_url: str) -> dict[str, Any]:
    return {"name": "up", "provider": "openai", "base_url": base_url, "api_key": "k"}
