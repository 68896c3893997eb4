"""Server-Sent Events framing: the only place the gateway makes SSE bytes.

Pure functions from fields to bytes, following the WHATWG ``text/event-stream``
format. Encoders on the hot path may build byte templates once per stream, but
they get them from :func:`data_prefix` / :func:`named_prefix` here, so the framing
rules live in one module. Intentional choices:

* A value containing line breaks (``\\r\\n``, ``\\r`` or ``\\n``) becomes several
  ``data:`` lines, which the client joins with ``\\n``; a ``\\r`` alone is therefore
  delivered as ``\\n``, as the spec's line splitting would do anyway.
* ``event`` and ``id`` must be single lines; ``id`` may not contain NUL (the spec
  ignores such ids). Violations raise ``ValueError`` instead of emitting a broken frame.
* Every frame ends with a blank line, so each call produces exactly one event
  (or one comment). Hence :data:`END` occurs in framed bytes only where an event
  ends, which lets :func:`with_ids` number the events of any encoder's output.
"""

from __future__ import annotations

import re

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")

#: The terminal event of an OpenAI-style stream.
DONE = b"data: [DONE]\n\n"
#: A keep-alive comment, ignored by clients.
PING = b": ping\n\n"
#: What ends every frame.
END = b"\n\n"


def _field(name: bytes, value: bytes) -> bytes:
    if b"\n" not in value and b"\r" not in value:
        return name + b": " + value + b"\n"
    return b"".join(name + b": " + line + b"\n" for line in _LINE_BREAK.split(value))


def _single_line(name: str, value: str) -> bytes:
    if "\n" in value or "\r" in value:
        raise ValueError(f"SSE {name} must be a single line: {value!r}")
    return value.encode()


def data_event(data: bytes) -> bytes:
    """One event with only a ``data`` field: the hot path of token streaming."""
    if b"\n" not in data and b"\r" not in data:
        return b"data: " + data + END
    return _field(b"data", data) + b"\n"


def data_prefix() -> bytes:
    """What precedes a single-line ``data`` value; the frame ends with :data:`END`.

    For encoders whose payload is one line by construction (orjson escapes CR and
    LF), so they can build ``prefix + json + END`` without scanning the payload.
    """
    return b"data: "


def named_prefix(event: str) -> bytes:
    """The ``event:`` line and the ``data:`` prefix of a named event's frame."""
    return b"event: " + _single_line("event", event) + b"\n" + data_prefix()


def with_ids(frames: bytes, last_seq: int, after: int = 0) -> tuple[bytes, int]:
    """Number the events in ``frames`` from ``last_seq + 1`` (an ``id:`` line each).

    Returns the numbered bytes, without the events numbered ``after`` or lower (a
    resuming reader's ``Last-Event-ID``), and the last number given.
    """
    count = frames.count(END)
    if count == 1:  # the per-token hot path
        seq = last_seq + 1
        return (b"id: %d\n%b" % (seq, frames) if seq > after else b""), seq
    out = []
    seq = last_seq
    for event in frames.split(END)[:count]:
        seq += 1
        if seq > after:
            out.append(b"id: %d\n%b\n\n" % (seq, event))
    return b"".join(out), seq


def with_retry(frames: bytes, retry_ms: int) -> bytes:
    """``frames`` with a ``retry:`` field (the reconnection delay) on their first event."""
    if retry_ms < 0:
        raise ValueError("SSE retry must be a non-negative integer")
    return b"retry: %d\n%b" % (retry_ms, frames)


def comment(text: str) -> bytes:
    """A comment frame (keep-alives, notes for humans reading ``curl -N``)."""
    return encode(comment=text)


def encode(
    data: bytes | str | None = None,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
    comment: str | None = None,
) -> bytes:
    """Frame one event (any of the fields) or, with only ``comment``, one comment."""
    out = bytearray()
    if comment is not None:
        out += b"".join(b": " + line + b"\n" for line in _LINE_BREAK.split(comment.encode()))
    if event is not None:
        out += b"event: " + _single_line("event", event) + b"\n"
    if id is not None:
        if "\0" in id:
            raise ValueError("SSE id must not contain NUL")
        out += b"id: " + _single_line("id", id) + b"\n"
    if retry is not None:
        if retry < 0:
            raise ValueError("SSE retry must be a non-negative integer")
        out += b"retry: " + str(int(retry)).encode() + b"\n"
    if data is not None:
        out += _field(b"data", data.encode() if isinstance(data, str) else data)
    if not out:
        raise ValueError("an SSE frame needs at least one field or a comment")
    return bytes(out + b"\n")
