"""``resumable: false``: streams without ``id:``/``retry:``, no reply log, no background."""

from __future__ import annotations

import aiohttp
import orjson

from tests.support.gateway import MakeGateway
from tests.support.sse_client import chat, stream_request


async def test_unresumable_stream_has_no_ids_retry_or_token(make_gateway: MakeGateway) -> None:
    plain = await make_gateway(resumable=False)
    logged = await make_gateway()
    body = chat("Say hi", max_tokens=4, seed=7, stream_options={"include_usage": True})
    got = await stream_request(plain, body)
    ref = await stream_request(logged, body)
    assert got.status == ref.status == 200
    assert b"id: " not in got.raw
    assert b"retry: " not in got.raw
    assert "X-Resume-Token" not in got.headers
    assert "X-Resume-Token" in ref.headers
    # The same events as the resumable stream, less its id and retry lines.
    stripped = b"".join(
        line + b"\n"
        for line in ref.raw.split(b"\n")[:-1]
        if not line.startswith((b"id: ", b"retry: "))
    )

    def ids_out(raw: bytes) -> list[bytes]:
        return [orjson.dumps({**orjson.loads(d), "id": "", "created": 0}) for d in _data(raw)]

    assert ids_out(got.raw) == ids_out(stripped)
    assert got.raw.endswith(b"data: [DONE]\n\n")
    reply_id = orjson.loads(got.data[0])["id"]
    async with aiohttp.ClientSession() as session:
        url = f"{plain}/v1/chat/completions/{reply_id}?stream=true"
        async with session.get(url) as response:
            assert response.status == 404
            assert (await response.json())["error"]["type"] == "invalid_request_error"


async def test_unresumable_gateway_refuses_background(make_gateway: MakeGateway) -> None:
    url = await make_gateway(resumable=False)
    body = chat("Later", max_tokens=4, stream=False, background=True)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", json=body) as response,
    ):
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["param"] == "background"
    assert error["type"] == "invalid_request_error"


def _data(raw: bytes) -> list[bytes]:
    return [
        line[len(b"data: ") :]
        for line in raw.split(b"\n")
        if line.startswith(b"data: ") and line != b"data: [DONE]"
    ]
