"""Deterministic, plausible reply text for the fake provider.

The same prompt and seed always give the same reply: a short acknowledgement that
quotes the prompt (so non-ASCII input comes back out), a few paragraphs drawn from
sentence banks, and sometimes a list or a fenced code block.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

_OPENERS = (
    "Good question. You asked: \u201c{q}\u201d.",
    "Here is how I would think about \u201c{q}\u201d.",
    "Let's work through \u201c{q}\u201d step by step.",
    "Thanks for asking about \u201c{q}\u201d. Here is a short answer.",
)

_SENTENCES = (
    "Streaming matters because people read while the model is still writing.",
    "The first token is what a user waits for, so time to first token deserves its own budget.",
    "A gateway should add almost nothing to that wait, ideally well under a millisecond.",
    "Each token travels as a small Server-Sent Event, which every browser understands.",
    "Proxies like to buffer responses, and buffering is the enemy of a typing effect.",
    "When a user closes the tab, the generation should stop too, or a GPU slot is wasted.",
    "Backpressure keeps a slow reader from filling the server's memory.",
    "A clear error in the stream is better than a reply that silently stops halfway.",
    "Deterministic output makes tests repeatable and bugs easy to reproduce.",
    "Latency is a distribution, so look at the median and the tail, not the average.",
    "Most of the cost of relaying tokens is in small writes and JSON encoding.",
    "Batching helps throughput, while streaming helps perceived latency.",
    "Caching a prompt prefix can cut the time to the first token considerably.",
    "Timeouts should be explicit: connecting, waiting for the first token, and idling.",
    "Retries belong before the first token; after it, the honest thing is to report the error.",
    "Load tests should be bounded in time and count, and measure the client's own CPU too.",
    "Tokenizers split text into pieces that are often shorter than words.",
    "Some characters, such as emoji, take several tokens but must reach the client whole.",
    "A good default is one that works without any configuration at all.",
    "Logs are most useful as structured events with a few well-chosen fields.",
    "Keep-alive comments stop idle proxies from closing a slow stream.",
    "Graceful shutdown lets answers in flight finish before the process exits.",
    "Small modules with one concept each are easier to read and to test.",
    "Measure first, then optimise the part the profile points at.",
    "An OpenAI-compatible API lets existing clients work without changes.",
    "The model name in every chunk should be the one the client asked for.",
    "Usage figures help people understand and control what a request costs.",
    "Fallbacks can hide an outage from users, as long as nothing was sent yet.",
    "Rate limits are easier to live with when the server says when to retry.",
    "Simple systems fail in simple ways, which is a feature worth keeping.",
)

_LIST_INTROS = ("A few things to keep in mind:", "In short:", "The main points are:")

_CODE = (
    (
        "python",
        'async for chunk in stream:\n    print(chunk.choices[0].delta.content or "", end="")',
    ),
    ("bash", "curl -N http://127.0.0.1:8080/v1/chat/completions \\\n  -d @request.json"),
    ("javascript", "for await (const event of events) {\n  output.append(event.text);\n}"),
)

_CLOSERS = (
    "I hope this helps.",
    "Let me know if you would like more detail on any part.",
    "That is the gist of it.",
)


def _excerpt(prompt: str, limit: int = 60) -> str:
    """The prompt's first ``limit`` characters, whitespace collapsed.

    Only as much of the prompt is read as the excerpt needs: splitting the whole of
    an 8 MiB prompt into words held the event loop for a fifth of a second. The
    result is the same as collapsing the whole prompt.
    """
    size = 4 * limit
    while True:
        words = prompt[:size].split()
        whole = size >= len(prompt)
        if not whole and words and not prompt[size].isspace():
            words.pop()  # cut at ``size``: the last word may go on
        text = " ".join(words)
        if whole or len(text) > limit:
            break
        size *= 4
    if not text:
        return "your message"
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def prompt_digest(prompt: str, seed: int | None) -> bytes:
    """What determines a reply: a SHA-256 of the seed and the prompt."""
    return hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()


def rng_of(digest: bytes) -> random.Random:
    """The random generator of a :func:`prompt_digest`."""
    return random.Random(int.from_bytes(digest[:8], "big"))


def seeded_rng(prompt: str, seed: int | None) -> random.Random:
    """A random generator determined by the prompt and the seed only."""
    return rng_of(prompt_digest(prompt, seed))


def compose_reply(prompt: str, rng: random.Random, min_chars: int) -> str:
    """A reply of at least ``min_chars`` characters, deterministic given ``rng``."""
    parts = [rng.choice(_OPENERS).format(q=_excerpt(prompt))]
    size = len(parts[0])
    while size < min_chars:
        block = _block(rng)
        parts.append(block)
        size += len(block) + 2
    parts.append(rng.choice(_CLOSERS))
    return "\n\n".join(parts)


def endless_reply(prompt: str, rng: random.Random) -> Iterator[str]:
    """The opener, then ``"\n\n"``-separated blocks for ever: a reply of any length,
    produced as it is read (deterministic given ``rng``)."""
    yield rng.choice(_OPENERS).format(q=_excerpt(prompt))
    while True:
        yield "\n\n" + _block(rng)


def _block(rng: random.Random) -> str:
    """One paragraph, list or code block."""
    roll = rng.random()
    if roll < 0.15:
        items = rng.sample(_SENTENCES, 3)
        return rng.choice(_LIST_INTROS) + "\n" + "\n".join(f"- {s}" for s in items)
    if roll < 0.25:
        language, code = rng.choice(_CODE)
        return f"For example:\n\n```{language}\n{code}\n```"
    return " ".join(rng.sample(_SENTENCES, rng.randint(3, 5)))
