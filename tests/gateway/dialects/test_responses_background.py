"""``background: true`` on ``/v1/responses``: answered at once, fetched later, resumable."""

from __future__ import annotations

import asyncio

import openai

from tests.support.gateway import MakeGateway


async def test_background_response_is_in_progress_then_completed(
    make_gateway: MakeGateway,
) -> None:
    url = await make_gateway()
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as client:
        raw = await client.responses.with_raw_response.create(
            model="fake",
            input="hello",
            background=True,
            extra_body={"fake": {"reply_tokens": 12, "tokens_per_second": 200, "ttft_ms": 0}},
        )
        started = raw.parse()
        assert started.status == "in_progress"
        assert started.object == "response"
        token = raw.headers["X-Resume-Token"]
        headers = {"X-Resume-Token": token}
        for _ in range(100):
            done = await client.responses.retrieve(started.id, extra_headers=headers)
            if done.status != "in_progress":
                break
            await asyncio.sleep(0.05)
    assert done.status == "completed"
    assert done.id == started.id
    assert done.usage is not None
    assert done.usage.output_tokens == 12
    assert done.output_text
