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

A conversation whose last message is the assistant's asks for a *continuation*
(what a gateway sends when another upstream died mid-answer): when that message's
text is a prefix, at a token boundary, of the reply the conversation without it
gets, the reply is the rest of that one (so a cut reply continued here reads as
the whole reply); otherwise it is the new reply of the whole conversation.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator, Sequence
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


def _seed_of(messages: Sequence[dict[str, Any]], seed: int | None) -> _Seed:
    whole = "\n".join(f"{m.get('role')}: {_text_of(m.get('content'))}" for m in messages)
    last_user = next(
        (_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    return _Seed(prompt_digest(whole, seed), last_user)


def _prefix_of(messages: Sequence[dict[str, Any]]) -> str | None:
    """The text of a last assistant message (a continuation is asked), else None."""
    if not messages or messages[-1].get("role") != "assistant":
        return None
    last = messages[-1]
    if last.get("tool_calls"):
        return None
    return _text_of(last.get("content")) or None


def _skip_prefix(tokens: Iterator[TextDelta], count: int, prefix: str) -> int | None:
    """Consume the tokens that spell ``prefix``; how many, or None when they do not."""
    at = taken = 0
    while at < len(prefix):
        if taken == count:
            return None
        text = next(tokens).text
        if not prefix.startswith(text, at):
            return None
        at += len(text)
        taken += 1
    return taken


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
        messages = request.messages
        prefix = _prefix_of(messages)
        large = is_large(messages)
        if prefix is not None:
            if large:
                seed = await asyncio.to_thread(_seed_of, messages[:-1], request.seed)
            else:
                seed = _seed_of(messages[:-1], request.seed)
            plan = self._continued(seed, prefix, reply_tokens, max_tokens)
            if plan is not None:
                return plan
        if large:
            seed = await asyncio.to_thread(_seed_of, messages, request.seed)
        else:
            seed = _seed_of(messages, request.seed)
        return self._plan(seed, reply_tokens, max_tokens)

    def reply(self, request: ChatRequest, reply_tokens: int | None) -> tuple[TextDelta, ...]:
        """The whole reply, as the stream sends it (for tests and tools)."""
        messages = request.messages
        prefix = _prefix_of(messages)
        plan = None
        if prefix is not None:
            seed = _seed_of(messages[:-1], request.seed)
            plan = self._continued(seed, prefix, reply_tokens, None)
        if plan is None:
            plan = self._plan(_seed_of(messages, request.seed), reply_tokens, None)
        return tuple(islice(plan.tokens, plan.count))

    def _continued(
        self, seed: _Seed, prefix: str, reply_tokens: int | None, max_tokens: int | None
    ) -> ReplyPlan | None:
        """The rest of the reply ``seed`` gets, when it starts with ``prefix``."""
        whole = self._plan(seed, reply_tokens, None)
        skipped = _skip_prefix(whole.tokens, whole.count, prefix)
        if skipped is None:
            return None
        count = whole.count - skipped
        if max_tokens is not None and max_tokens < count:
            return ReplyPlan(whole.tokens, max_tokens, "length")
        return ReplyPlan(whole.tokens, count, "stop")

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
