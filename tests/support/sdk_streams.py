"""Checks on a reply streamed through the real openai SDK."""

from __future__ import annotations

from typing import Any


def assert_complete(chunks: list[Any], text: str, completion_tokens: int) -> None:
    """The SDK's chunks of one streamed reply: ``text`` in full, one ``stop`` at the
    end, and the usage chunk last (``stream_options.include_usage``)."""
    got = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert got == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == completion_tokens
