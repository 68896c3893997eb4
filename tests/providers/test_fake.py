"""The fake provider and the tokenizer, driven directly."""

from __future__ import annotations

import asyncio
import time

import pytest
import tiktoken
from hypothesis import given
from hypothesis import strategies as st

from providers.base import ChatRequest, Provider
from providers.errors import ProviderBadRequest, ProviderRateLimited, ProviderUnavailable
from providers.events import Finish, TextDelta, Usage
from providers.fake.provider import FakeProvider
from providers.support.tokenizer import OFFLINE_ENCODING, Tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.load()


def request(text: str = "hello", **options: object) -> ChatRequest:
    return ChatRequest(
        model="fake", messages=[{"role": "user", "content": text}], seed=1, options=options
    )


async def collect(provider: FakeProvider, req: ChatRequest) -> list[object]:
    return [event async for event in provider.stream(req)]


def test_is_a_provider(tokenizer: Tokenizer) -> None:
    assert isinstance(FakeProvider(tokenizer), Provider)


def test_offline_encoding_loads_without_network(tokenizer: Tokenizer) -> None:
    assert tokenizer.name == OFFLINE_ENCODING
    assert tokenizer.count("hello world") == 2


def test_unavailable_encoding_falls_back_to_offline() -> None:
    assert Tokenizer.load("no_such_encoding").name == OFFLINE_ENCODING


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii text",
        "emoji 🎉🧑‍🚀👍🏽 here",
        "中文分词测试\uff0c日本語のテキスト",
        "mixé ∑ \U0001d518\U0001d52b\U0001d526",
    ],
)
def test_pieces_are_tokens_and_never_split_characters(tokenizer: Tokenizer, text: str) -> None:
    pieces = tokenizer.pieces(text)
    assert "".join(pieces) == text
    assert all("\ufffd" not in p and p for p in pieces)
    # One piece per token, except where a character needed several tokens.
    assert len(pieces) <= len(tiktoken.get_encoding(OFFLINE_ENCODING).encode(text))


async def test_events_in_order_with_usage(tokenizer: Tokenizer) -> None:
    events = await collect(FakeProvider(tokenizer), request(reply_tokens=25))
    assert all(isinstance(e, TextDelta) for e in events[:25])
    assert events[25] == Finish("stop")
    assert isinstance(events[26], Usage)
    assert events[26].completion_tokens == 25
    assert len(events) == 27


async def test_default_length_is_a_few_hundred_and_deterministic(tokenizer: Tokenizer) -> None:
    provider = FakeProvider(tokenizer)
    lengths = set()
    for i in range(5):
        a = await collect(provider, request(f"question {i}"))
        b = await collect(FakeProvider(tokenizer), request(f"question {i}"))
        assert a == b
        lengths.add(len(a) - 2)
        text = "".join(e.text for e in a if isinstance(e, TextDelta))
        # A whole reply: it ends where a sentence ends, never cut mid-word.
        assert text.endswith((".", "?", "!")), text[-40:]
    assert all(120 <= n <= 600 for n in lengths)
    assert len(lengths) > 1


async def test_pace_and_first_token_delay(tokenizer: Tokenizer) -> None:
    provider = FakeProvider(tokenizer)
    stamps: list[float] = []
    start = time.monotonic()
    req = request(reply_tokens=10, tokens_per_second=50, ttft_ms=200)
    async for event in provider.stream(req):
        if isinstance(event, TextDelta):
            stamps.append(time.monotonic() - start)
    assert stamps[0] >= 0.19
    # Ten tokens at 50/s take at least 9 intervals of 20 ms after the first.
    assert stamps[-1] - stamps[0] >= 0.17


async def test_fail_after_and_error_kinds(tokenizer: Tokenizer) -> None:
    provider = FakeProvider(tokenizer)
    seen = []
    with pytest.raises(ProviderUnavailable, match="after 3 tokens"):
        async for event in provider.stream(request(fail_after=3)):
            seen.append(event)
    assert len(seen) == 3
    with pytest.raises(ProviderRateLimited) as limited:
        await collect(provider, request(fail_after=0, error="rate_limited", retry_after=7))
    assert limited.value.retry_after == 7


async def test_stall_until_cancelled(tokenizer: Tokenizer) -> None:
    provider = FakeProvider(tokenizer)
    got: list[object] = []

    async def consume() -> None:
        async for event in provider.stream(request(stall_after=2)):
            got.append(event)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.2)
    assert len(got) == 2
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_bad_option_names_the_field(tokenizer: Tokenizer) -> None:
    with pytest.raises(ProviderBadRequest) as bad:
        await collect(FakeProvider(tokenizer), request(tokens_per_second=-5))
    assert bad.value.param == "fake.tokens_per_second"


# --- continuing a prefix (what the gateway asks after an upstream died mid-answer) ----


def continued(req: ChatRequest, prefix: str, max_tokens: int | None = None) -> ChatRequest:
    messages = [*req.messages, {"role": "assistant", "content": prefix}]
    return ChatRequest(
        model=req.model,
        messages=messages,
        seed=req.seed,
        options=req.options,
        max_tokens=max_tokens,
    )


@pytest.mark.parametrize("options", [{}, {"reply_tokens": 60}], ids=["default", "reply_tokens"])
@pytest.mark.parametrize("cut", [1, 17])
async def test_a_prefix_of_its_own_reply_is_continued(
    tokenizer: Tokenizer, options: dict[str, object], cut: int
) -> None:
    provider = FakeProvider(tokenizer)
    whole = [e.text for e in provider.reply(request(**options), options.get("reply_tokens"))]  # type: ignore[arg-type]
    prefix = "".join(whole[:cut])
    events = await collect(provider, continued(request(**options), prefix))
    texts = [e.text for e in events if isinstance(e, TextDelta)]
    assert prefix + "".join(texts) == "".join(whole)
    assert texts == whole[cut:]
    assert [e for e in events if isinstance(e, Finish)] == [Finish("stop")]
    usage = events[-1]
    assert isinstance(usage, Usage)
    assert usage.completion_tokens == len(whole) - cut


async def test_a_continuation_honours_max_tokens(tokenizer: Tokenizer) -> None:
    provider = FakeProvider(tokenizer)
    whole = [e.text for e in provider.reply(request(), None)]
    events = await collect(provider, continued(request(), "".join(whole[:5]), max_tokens=3))
    assert [e.text for e in events if isinstance(e, TextDelta)] == whole[5:8]
    assert Finish("length") in events


async def test_a_foreign_prefix_gets_a_new_reply(tokenizer: Tokenizer) -> None:
    provider = FakeProvider(tokenizer)
    own = "".join(e.text for e in provider.reply(request(), None))
    foreign = continued(request(), "Hello world, héllo")
    texts = "".join(e.text for e in await collect(provider, foreign) if isinstance(e, TextDelta))
    assert texts
    assert texts != own
    assert texts == "".join(e.text for e in provider.reply(foreign, None))  # deterministic


def _whole_excerpt(prompt: str, limit: int = 60) -> str:
    """The excerpt as it was computed before: from the whole prompt."""
    text = " ".join(prompt.split())
    if not text:
        return "your message"
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


@given(st.text(alphabet=st.sampled_from("ab \n\t\u00e9\u3000"), max_size=2000))
def test_excerpt_reads_the_head_and_matches_the_whole(prompt: str) -> None:
    from providers.fake.text import _excerpt

    assert _excerpt(prompt) == _whole_excerpt(prompt)


def test_excerpt_of_an_8_mib_prompt_is_its_first_words() -> None:
    """Regression: collapsing the whole of an 8 MiB prompt held the event loop ~0.2 s."""
    from providers.fake.text import _excerpt

    prompt = "  lead   words here " + "word " * 1_700_000
    assert _excerpt(prompt) == _whole_excerpt(prompt)
    assert _excerpt(prompt).startswith("lead words here word word")
