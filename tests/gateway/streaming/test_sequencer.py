"""The sequencer's hot path numbers a token's frame exactly as the general path does."""

from __future__ import annotations

from gateway.dialects.chat_completions import ChunkEncoder
from gateway.streaming.replylog import Sequencer


def test_one_equals_number_for_a_single_event_frame() -> None:
    encoder = ChunkEncoder(id="chatcmpl-x", created=1, model="m", include_usage=False)
    fast, general = Sequencer(encoder, retry_ms=1000), Sequencer(encoder, retry_ms=1000)
    assert fast.start() == general.start()
    for text in ["a", "b\nc", "😀"]:
        frame = encoder.text(text)
        assert fast.one(frame) == general.number(frame)
    assert fast.seq == general.seq == 4


def test_one_respects_a_resuming_readers_position() -> None:
    encoder = ChunkEncoder(id="chatcmpl-x", created=1, model="m", include_usage=False)
    reader = Sequencer(encoder, after=2)
    reader.start()  # event 1: dropped
    assert reader.one(encoder.text("a")) == b""  # event 2: dropped
    assert reader.one(encoder.text("b")).startswith(b"id: 3\n")


def test_one_numbers_every_event_when_a_token_opens_an_item() -> None:
    """Regression: the Responses encoder's first token is three events (item, part, delta)."""
    encoder = ChunkEncoder(id="chatcmpl-x", created=1, model="m", include_usage=False)
    fast, general = Sequencer(encoder), Sequencer(encoder)
    frames = encoder.text("a") + encoder.text("b") + encoder.text("c")
    assert fast.one(frames) == general.number(frames)
    assert fast.one(frames).count(b"id: ") == 3
