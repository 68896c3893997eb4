"""The fake provider's replies, produced lazily and bounded like production code.

A reply is determined by the conversation and the seed (a SHA-256 of both seeds its
random generator). Two kinds:

* the default reply (150-400 tokens, whole: it ends with a closing sentence) is
  small, so it is composed and tokenised at once, and kept in a cache bounded in
  *bytes* (keyed by the digest, never by the prompt itself);
* an exact ``reply_tokens`` reply (at most :data:`MAX_REPLY_TOKENS`) is an endless
  run of blocks, tokenised a block (a few hundred characters) at a time as the
  stream asks for tokens, and cut at the length; ``max_tokens`` cuts it *before*
  any work is done. Nothing of it is retained.

Hashing a very large conversation runs off the event loop (:meth:`ReplyComposer.plan`).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Literal

from providers.base import ChatRequest
from providers.events import TextDelta
from providers.fake.text import compose_reply, endless_reply, prompt_digest, rng_of
from providers.support.tokenizer import Tokenizer, is_large

#: The longest reply ``fake.reply_tokens`` may ask for.
MAX_REPLY_TOKENS = 100_000
#: What the default-reply cache may hold: token text plus a per-entry overhead.
CACHE_BYTES = 4 * 1024 * 1024
_ENTRY_OVERHEAD = 64
_PIECE_OVERHEAD = 56


@dataclass(frozen=True, slots=True)
class ReplyPlan:
    """What a stream sends: ``count`` token events from ``tokens``, then ``finish``."""

    tokens: Iterator[TextDelta]
    count: int
    finish: Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class _Seed:
    digest: bytes
    last_user: str


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _seed_of(request: ChatRequest) -> _Seed:
    messages = request.messages
    whole = "\n".join(f"{m.get('role')}: {_text_of(m.get('content'))}" for m in messages)
    last_user = next(
        (_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    return _Seed(prompt_digest(whole, request.seed), last_user)


class ReplyComposer:
    """Makes the token events of fake replies; see the module docstring."""

    def __init__(self, tokenizer: Tokenizer, *, cache_bytes: int = CACHE_BYTES) -> None:
        self._tokenizer = tokenizer
        self._cache: OrderedDict[bytes, tuple[TextDelta, ...]] = OrderedDict()
        self._cache_sizes: dict[bytes, int] = {}
        self._cache_bytes = cache_bytes
        self._cached = 0

    async def plan(
        self, request: ChatRequest, reply_tokens: int | None, max_tokens: int | None
    ) -> ReplyPlan:
        """The reply of ``request``; a large conversation is hashed in a thread."""
        if is_large(request.messages):
            seed = await asyncio.to_thread(_seed_of, request)
        else:
            seed = _seed_of(request)
        return self._plan(seed, reply_tokens, max_tokens)

    def reply(self, request: ChatRequest, reply_tokens: int | None) -> tuple[TextDelta, ...]:
        """The whole reply, as the stream sends it (for tests and tools)."""
        plan = self._plan(_seed_of(request), reply_tokens, None)
        return tuple(islice(plan.tokens, plan.count))

    def clear(self) -> None:
        """Forget the cached replies."""
        self._cache.clear()
        self._cache_sizes.clear()
        self._cached = 0

    def _plan(self, seed: _Seed, reply_tokens: int | None, max_tokens: int | None) -> ReplyPlan:
        if reply_tokens is None:
            whole = self._default_reply(seed)
            tokens: Iterator[TextDelta] = iter(whole)
            count = len(whole)
        else:
            tokens = self._endless(seed)
            count = reply_tokens
        if max_tokens is not None and max_tokens < count:
            return ReplyPlan(tokens, max_tokens, "length")
        return ReplyPlan(tokens, count, "stop")

    def _default_reply(self, seed: _Seed) -> tuple[TextDelta, ...]:
        cached = self._cache.get(seed.digest)
        if cached is not None:
            self._cache.move_to_end(seed.digest)
            return cached
        rng = rng_of(seed.digest)
        # A whole reply (never cut mid-sentence) of roughly 150-400 tokens.
        text = compose_reply(seed.last_user, rng, min_chars=rng.randint(150, 400) * 4)
        events = tuple(TextDelta(p) for p in self._tokenizer.pieces(text))
        self._remember(seed.digest, events)
        return events

    def _remember(self, digest: bytes, events: tuple[TextDelta, ...]) -> None:
        size = _ENTRY_OVERHEAD + sum(len(e.text.encode()) + _PIECE_OVERHEAD for e in events)
        if size > self._cache_bytes:
            return
        self._cache[digest] = events
        self._cache_sizes[digest] = size
        self._cached += size
        while self._cached > self._cache_bytes:
            old, _ = self._cache.popitem(last=False)
            self._cached -= self._cache_sizes.pop(old)

    @property
    def cached_bytes(self) -> int:
        """The cache's accounted size."""
        return self._cached

    def _endless(self, seed: _Seed) -> Iterator[TextDelta]:
        pieces = self._tokenizer.pieces
        for block in endless_reply(seed.last_user, rng_of(seed.digest)):
            for piece in pieces(block):
                yield TextDelta(piece)
