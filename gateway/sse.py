"""Server-Sent Events framing: pure functions from fields to bytes.

Follows the WHATWG ``text/event-stream`` format. Intentional choices:

* A value containing line breaks (``\\r\\n``, ``\\r`` or ``\\n``) becomes several
  ``data:`` lines, which the client joins with ``\\n``; a ``\\r`` alone is therefore
  delivered as ``\\n``, as the spec's line splitting would do anyway.
* ``event`` and ``id`` must be single lines; ``id`` may not contain NUL (the spec
  ignores such ids). Violations raise ``ValueError`` instead of emitting a broken frame.
* Every frame ends with a blank line, so each call produces exactly one event
  (or one comment).
"""

from __future__ import annotations

import re

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")

#: The terminal event of an OpenAI-style stream.
DONE = b"data: [DONE]\n\n"
#: A keep-alive comment, ignored by clients.
PING = b": ping\n\n"


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
        return b"data: " + data + b"\n\n"
    return _field(b"data", data) + b"\n"


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
