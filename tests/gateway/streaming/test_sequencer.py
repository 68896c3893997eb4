"""The sequencer's hot path numbers a token's frame exactly as the general path does."""

from __future__ import annotations

import orjson

from gateway.dialects.chat_completions import ChunkEncoder
from gateway.dialects.responses import ResponsesRequest
from gateway.streaming import framer
from gateway.streaming.replylog import Ended, Sequencer
from providers.events import TextDelta


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


def test_responses_events_are_numbered_by_their_sequence_number() -> None:
    """The Responses encoder counts from 0, so each SSE id is the event's sequence_number."""
    request = ResponsesRequest.model_validate({"model": "m", "input": "x"})
    encoder = request.encoder("resp_x", 1)
    sequencer = Sequencer(encoder)
    frames = sequencer.start() + sequencer.one(encoder.text("a")) + sequencer.one(encoder.text("b"))
    blocks = frames.split(framer.END)[:-1]
    assert len(blocks) == 6  # created, in_progress, item, part, two deltas
    for block in blocks:
        id_line, _, data = block.split(b"\n")
        number = orjson.loads(data.removeprefix(b"data: "))["sequence_number"]
        assert id_line == b"id: %d" % number
    assert blocks[0].startswith(b"id: 0\n")
    reader = Sequencer(request.encoder("resp_x", 1), after=3)  # had 0..3
    reader.start()
    assert reader.frames(TextDelta("a")).startswith(b"id: 4\n")


def test_a_reader_past_a_lost_replys_log_still_gets_its_error() -> None:
    """Regression (seen in test_a_replica_killed_mid_stream, about one run in three): the
    dead producer had sent event 4 to its client, but its log held events up to 3; the
    resumed reader (Last-Event-ID 4) got the reply_lost error numbered 4, dropped as
    seen: a 200 with an empty body."""
    encoder = ChunkEncoder(id="chatcmpl-x", created=1, model="m", include_usage=False)
    reader = Sequencer(encoder, after=4)
    logged = reader.frames(TextDelta("a")) + reader.frames(TextDelta("b"))  # events 1-3
    assert logged == b""
    lost = {"message": "lost", "type": "server_error", "param": None, "code": "reply_lost"}
    out = reader.frames(Ended(error=lost, lost=True))
    assert out.startswith(b"id: 5\n")
    assert b'"code":"reply_lost"' in out
    # A reader behind the log is numbered as before.
    behind = Sequencer(encoder, after=1)
    behind.frames(TextDelta("a"))
    assert behind.frames(Ended(error=lost, lost=True)).startswith(b"id: 3\n")
    # A logged end the reader saw stays seen (the resume is then a 204).
    seen = Sequencer(encoder, after=3)
    seen.frames(TextDelta("a"))
    assert seen.frames(Ended(error=lost)) == b""
