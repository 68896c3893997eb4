"""tokenpipe in front of a real model: SmolLM2-135M served by llama-cpp-python.

Greedy decoding (temperature 0, a fixed seed) makes the model's reply a function of
the request, so whatever reaches a client through the gateway can be compared with
what the same request gets from the llama server directly. With one caveat: the
server keeps the last conversation in its KV cache and serves a request in one of
three ways: a prompt evaluated whole (one batch), a cached prefix plus a suffix
(at least one token evaluated), or, when the previous request stopped right
after the prompt, its logits reused as they are. The batch shapes differ, so do
the logits a little, and a 135M model's greedy choice can flip on that. So each
comparison first sends its prompt once with ``max_tokens=2`` (``warm``): every
compared request is then served from a cached prefix, the same way.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI
from playwright.async_api import Request, Route, async_playwright, expect
from structlog.testing import capture_logs

from tests.e2e.realmodel.conftest import MODEL_ALIAS, LlamaServer, unavailable_reason
from tests.support.chromium import CHROMIUM, CHROMIUM_ARGS

# One skip line for the module rather than one per test.
if reason := unavailable_reason():
    pytest.skip(reason, allow_module_level=True)

pytestmark = pytest.mark.realmodel

GREEDY: dict[str, Any] = {"temperature": 0, "seed": 1234}
ROUTE = "smol"
# Fullwidth punctuation is the point: Chinese as it is written.
CJK_PROMPT = "请用中文回答：天空是什么颜色？"  # noqa: RUF001


@dataclass
class Streamed:
    """What one streamed reply delivered: the text of each content chunk, the finish."""

    pieces: list[str] = field(default_factory=list)
    finish: str | None = None
    usage: dict[str, int] | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def route(llama: LlamaServer, name: str = ROUTE, **extra: Any) -> dict[str, Any]:
    """A routing-table entry sending ``name`` to the llama server."""
    return {
        "name": name,
        "provider": "openai",
        "base_url": llama.base_url,
        "upstream_model": MODEL_ALIAS,
        "retries": 0,
        **extra,
    }


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
async def direct(llama: LlamaServer) -> AsyncIterator[AsyncOpenAI]:
    """An SDK client talking to the llama server itself."""
    async with AsyncOpenAI(base_url=llama.base_url, api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture
async def gateway(llama: LlamaServer, make_gateway: Any) -> AsyncIterator[AsyncOpenAI]:
    """An SDK client talking to tokenpipe, which routes ``smol`` to the llama server."""
    url = await make_gateway(models=[route(llama)])
    async with AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        yield client


async def stream(client: AsyncOpenAI, model: str, text: str, **params: Any) -> Streamed:
    got = Streamed()
    chunks = await client.chat.completions.create(
        model=model, messages=user(text), stream=True, **GREEDY, **params
    )
    async for chunk in chunks:
        if chunk.usage is not None:
            got.usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            if choice.delta.content:
                got.pieces.append(choice.delta.content)
            if choice.finish_reason is not None:
                got.finish = choice.finish_reason
    return got


async def warm(direct: AsyncOpenAI, text: str) -> None:
    """Put ``text``'s prompt in the server's cache (see the module docstring)."""
    await direct.chat.completions.create(
        model=MODEL_ALIAS, messages=user(text), max_tokens=2, **GREEDY
    )


@pytest.mark.parametrize(
    "prompt",
    [
        "Name three colours of the rainbow.",
        CJK_PROMPT,
        "Reply with a few emoji that describe a sunny day: ☀️🌴",
    ],
    ids=["english", "cjk", "emoji"],
)
async def test_streamed_text_and_chunks_match_the_model(
    direct: AsyncOpenAI, gateway: AsyncOpenAI, prompt: str
) -> None:
    await warm(direct, prompt)
    upstream = await stream(direct, MODEL_ALIAS, prompt, max_tokens=32)
    relayed = await stream(gateway, ROUTE, prompt, max_tokens=32)
    assert upstream.text.strip()
    assert relayed.text == upstream.text
    # One SSE event per upstream chunk: the gateway neither merges nor splits.
    assert relayed.pieces == upstream.pieces
    assert relayed.finish == upstream.finish


async def test_finish_reasons_stop_and_length(direct: AsyncOpenAI, gateway: AsyncOpenAI) -> None:
    prompt = "Answer with one word: is fire hot?"
    await warm(direct, prompt)
    stopped = await stream(gateway, ROUTE, prompt, max_tokens=48)
    assert stopped.finish == "stop"
    assert stopped.text == (await stream(direct, MODEL_ALIAS, prompt, max_tokens=48)).text
    cut = await stream(gateway, ROUTE, "Count from one to fifty in words.", max_tokens=4)
    assert cut.finish == "length"
    assert 1 <= len(cut.pieces) <= 4


async def test_non_streaming_reply_matches_the_model(
    direct: AsyncOpenAI, gateway: AsyncOpenAI
) -> None:
    prompt = "Write one short sentence about rivers."
    await warm(direct, prompt)
    upstream = await direct.chat.completions.create(
        model=MODEL_ALIAS, messages=user(prompt), max_tokens=32, **GREEDY
    )
    relayed = await gateway.chat.completions.create(
        model=ROUTE, messages=user(prompt), max_tokens=32, **GREEDY
    )
    assert upstream.choices[0].message.content
    assert relayed.choices[0].message.content == upstream.choices[0].message.content
    assert relayed.choices[0].finish_reason == upstream.choices[0].finish_reason


async def cpu_rate(llama: LlamaServer, seconds: float) -> float:
    """The server's CPU use over ``seconds``, in cores."""
    before = llama.cpu_seconds()
    await asyncio.sleep(seconds)
    return (llama.cpu_seconds() - before) / seconds


async def test_client_disconnect_stops_the_generation(
    llama: LlamaServer, gateway: AsyncOpenAI
) -> None:
    chunks = await gateway.chat.completions.create(
        model=ROUTE,
        messages=user("Tell me a very long story about a lighthouse keeper."),
        stream=True,
        max_tokens=1500,
        **GREEDY,
    )
    received = 0

    async def read() -> None:
        nonlocal received
        async for _ in chunks:
            received += 1

    reader = asyncio.create_task(read())
    while received < 3:
        await asyncio.sleep(0.02)
    busy = await cpu_rate(llama, 1.5)
    assert not reader.done(), "the reply ended before the disconnect"
    reader.cancel()
    await chunks.close()
    await asyncio.sleep(0.5)
    idle = await cpu_rate(llama, 2.0)
    assert busy > 0.3, f"the server was not generating ({busy:.2f} cores)"
    assert idle < busy / 4, f"still busy after the disconnect: {idle:.2f} vs {busy:.2f} cores"
    # The server takes one request at a time: a quick answer means it is free.
    started = time.monotonic()
    follow_up = await stream(gateway, ROUTE, "Say hi.", max_tokens=4)
    assert follow_up.pieces
    assert time.monotonic() - started < 10


def long_prompt() -> str:
    """~450 tokens, seconds of prompt processing on a small CPU; the nonce up front
    defeats the server's prompt cache."""
    sentence = "The quick brown fox jumps over the lazy dog near the quiet river bank. "
    return f"[{uuid.uuid4()}] " + sentence * 25 + "\nSummarise the text above in one line."


async def test_slow_first_token_times_out_then_succeeds_with_more_time(
    llama: LlamaServer, make_gateway: Any
) -> None:
    url = await make_gateway(
        models=[
            route(llama, "smol-impatient", timeouts={"first_token": 0.1}),
            route(llama, "smol-patient", timeouts={"first_token": 60}),
        ]
    )
    async with aiohttp.ClientSession() as session:
        body = {"messages": user(long_prompt()), "stream": True, "max_tokens": 8, **GREEDY}
        started = time.monotonic()
        async with session.post(
            f"{url}/v1/chat/completions", json={**body, "model": "smol-impatient"}
        ) as response:
            assert response.status == 504
            error = (await response.json())["error"]
        assert time.monotonic() - started < 5
        assert error == {
            "message": error["message"],
            "type": "timeout_error",
            "param": None,
            "code": "upstream_timeout",
        }
        assert "0.1 s" in error["message"]

        body["messages"] = user(long_prompt())
        started = time.monotonic()
        async with session.post(
            f"{url}/v1/chat/completions", json={**body, "model": "smol-patient"}
        ) as response:
            # The gateway answers once the first token is in: slow for real.
            assert time.monotonic() - started > 0.1
            assert response.status == 200
            raw = await response.text()
    assert raw.rstrip().endswith("data: [DONE]")
    assert '"content":' in raw


def visible(text: str | None) -> str:
    """What a reader sees of Markdown as the page renders it: marks and spacing dropped."""
    return re.sub(r"[\s`*_#>-]", "", text or "")


@pytest.mark.browser
async def test_chat_page_streams_a_real_reply(
    llama: LlamaServer, make_gateway: Any, direct: AsyncOpenAI
) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    prompt = "Name two kinds of trees."
    params = {**GREEDY, "max_tokens": 24}
    await warm(direct, prompt)
    expected = await stream(direct, MODEL_ALIAS, prompt, max_tokens=24)
    url = await make_gateway(models=[route(llama)])

    async def greedy(route: Route, request: Request) -> None:
        # The page sends no sampling parameters; add them so the reply is known.
        body = request.post_data_json
        await route.continue_(post_data={**body, **params})

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page()
            await page.route("**/v1/chat/completions", greedy)
            await page.goto(url + "/")
            select = page.get_by_test_id("model-select")
            await expect(select.locator(f'option[value="{ROUTE}"]')).to_be_attached()
            await select.select_option(ROUTE)
            await page.get_by_test_id("prompt").fill(prompt)
            await page.get_by_test_id("send").click()
            reply = page.get_by_test_id("assistant-message").last
            await expect(reply).to_have_attribute("data-state", "done", timeout=60_000)
            shown = await reply.locator(".body").text_content()
        finally:
            await browser.close()

    assert visible(shown) == visible(expected.text)


async def test_streamed_usage_counts_the_models_tokens(
    llama: LlamaServer, make_gateway: Any, direct: AsyncOpenAI
) -> None:
    """usage_count ``tokenize``: exact for CJK, where a character spans several tokens.

    llama-cpp-python's server sends no usage in streams, and here several tokens come
    as one chunk; the gateway asks the server's ``/extras/tokenize/count`` instead.
    """
    prompt = CJK_PROMPT
    url = await make_gateway(models=[route(llama, usage_count="tokenize")])
    await warm(direct, prompt)
    upstream = await direct.chat.completions.create(
        model=MODEL_ALIAS, messages=user(prompt), max_tokens=32, **GREEDY
    )
    await warm(direct, prompt)
    async with AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as gateway:
        with capture_logs() as logs:
            relayed = await stream(
                gateway, ROUTE, prompt, max_tokens=32, stream_options={"include_usage": True}
            )
    assert upstream.usage is not None
    assert relayed.usage is not None
    assert relayed.text == upstream.choices[0].message.content
    # The point of the mode: the chunks alone would undercount.
    assert len(relayed.pieces) < upstream.usage.completion_tokens - 1
    assert abs(relayed.usage["completion_tokens"] - upstream.usage.completion_tokens) <= 1
    finished = next(e for e in logs if e["event"] == "stream_finished")
    assert finished["counted_by"] == "tokenize"


async def test_streamed_usage_counts_chunks_within_one_token_for_ascii(
    direct: AsyncOpenAI, gateway: AsyncOpenAI
) -> None:
    """usage_count ``chunks`` (the default for compatible upstreams): one token a chunk.

    With ASCII text every token is one chunk, so the count is within one token of
    the model's own (the server reports one more than it sends at ``length``). CJK
    is the documented estimate case: a character spanning two tokens arrives as one
    chunk (``usage_count: tokenize`` above counts it exactly).
    """
    prompt = "Write one sentence about rivers."
    await warm(direct, prompt)
    upstream = await direct.chat.completions.create(
        model=MODEL_ALIAS, messages=user(prompt), max_tokens=24, **GREEDY
    )
    relayed = await stream(
        gateway, ROUTE, prompt, max_tokens=24, stream_options={"include_usage": True}
    )
    assert upstream.usage is not None
    assert relayed.usage is not None
    assert abs(relayed.usage["completion_tokens"] - upstream.usage.completion_tokens) <= 1


async def test_every_dialect_through_the_real_model(
    direct: AsyncOpenAI, gateway: AsyncOpenAI
) -> None:
    """The Responses and Messages doors stream the same greedy text as a direct call."""
    import anthropic

    prompt = "Name three colours."
    await warm(direct, prompt)
    expected = await direct.chat.completions.create(
        model=MODEL_ALIAS, messages=user(prompt), max_tokens=16, **GREEDY
    )
    want = expected.choices[0].message.content or ""
    assert want

    await warm(direct, prompt)
    texts: list[str] = []
    async with gateway.responses.stream(
        model=ROUTE, input=prompt, max_output_tokens=16, temperature=0
    ) as events:
        async for event in events:
            if event.type == "response.output_text.delta":
                texts.append(event.delta)
    assert "".join(texts) == want

    await warm(direct, prompt)
    base = str(gateway.base_url).removesuffix("/v1/").removesuffix("/v1")
    claude = anthropic.AsyncAnthropic(base_url=base, api_key="unused", max_retries=0)
    async with (
        claude,
        claude.messages.stream(
            model=ROUTE,
            max_tokens=16,
            messages=user(prompt),
            extra_body={"temperature": 0},
        ) as messages,
    ):
        got = "".join([text async for text in messages.text_stream])
    assert got == want
