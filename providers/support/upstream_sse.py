"""Reading upstream responses: an incremental Server-Sent Events parser, and Retry-After.

:class:`SSEParser` turns the bytes of a ``text/event-stream`` body, in chunks of any
size, into :class:`SSEEvent` values, following the WHATWG event-stream parsing rules:
lines end in CRLF, LF or CR (a CR at the end of one chunk may pair with an LF at the
start of the next); a leading UTF-8 BOM is dropped; ``:`` lines are comments; one
space after the colon is removed; ``data`` lines are joined with LF; an event is
dispatched on a blank line, and only if it has data; an unterminated event at the end
of the stream is discarded.

Intentional divergences: ``data`` stays ``bytes`` (``orjson`` parses bytes directly,
so each event saves a decode), and ``id`` / ``retry`` are ignored (an upstream relay
never reconnects with ``Last-Event-ID``). An event still growing past
:data:`MAX_EVENT_BYTES` across reads fails the reply (``ProviderUnavailable``).
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from datetime import UTC
from typing import Final, NamedTuple

from providers.errors import ProviderUnavailable

_BOM = b"\xef\xbb\xbf"
#: The most an event may take before it ends (its lines and the line being read): a
#: token's chunk is a few hundred bytes; an upstream that never ends its line would
#: otherwise grow memory, and every read would copy what came before.
MAX_EVENT_BYTES: Final = 4 * 1024 * 1024


class SSEEvent(NamedTuple):
    """One dispatched event: its type (``"message"`` when unnamed) and its data."""

    event: str
    data: bytes


class SSEParser:
    """Incremental event-stream parser: feed it chunks, get whole events back."""

    __slots__ = ("_carry", "_data", "_event", "_idle", "_started")

    def __init__(self) -> None:
        self._carry = b""
        self._data: list[bytes] = []
        self._event = ""
        self._started = False
        #: Between events: past the BOM, nothing carried, no event begun.
        self._idle = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse ``chunk`` and return the events it completes (often none or one)."""
        if self._idle and (data := _lone_data(chunk)) is not None:
            return [SSEEvent("message", data)]
        buf = self._begin(chunk)
        datas = self._whole_events(buf)
        if datas is not None:
            return [SSEEvent("message", data) for data in datas]
        return self._slow(buf)

    def feed_data(self, chunk: bytes) -> list[bytes]:
        """:meth:`feed`, for a reader that ignores event types: each event's data."""
        if self._idle and (data := _lone_data(chunk)) is not None:
            return [data]  # a token per read: no event tuple made
        buf = self._begin(chunk)
        datas = self._whole_events(buf)
        if datas is not None:
            return datas  # no event tuples made either
        return [event.data for event in self._slow(buf)]

    def _begin(self, chunk: bytes) -> bytes:
        """The carry and ``chunk``, past the BOM on the stream's first bytes (checked
        here, so the first read, often a whole burst of events, takes the shortcut)."""
        buf = self._carry + chunk if self._carry else chunk
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                return buf  # maybe the BOM's first bytes: the line loop carries them
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[len(_BOM) :]
            self._carry = b""  # now in ``buf``
        return buf

    def _whole_events(self, buf: bytes) -> list[bytes] | None:
        """The common case, whole one-line ``data:`` events (tokens), without the line
        loop: their data, or None for anything else (the line loop's, from the same
        bytes)."""
        if not self._started or self._data or self._event or b"\r" in buf:
            return None
        end = buf.rfind(b"\n\n")
        if end == -1:
            return None
        datas: list[bytes] = []
        for part in buf[:end].split(b"\n\n"):
            if not part.startswith(b"data: ") or b"\n" in part:
                return None
            datas.append(part[6:])
        self._carry = buf[end + 2 :]
        self._idle = not self._carry
        return datas

    def _slow(self, buf: bytes) -> list[SSEEvent]:
        events = self._lines(buf)
        self._idle = self._started and not (self._carry or self._data or self._event)
        return events

    def _lines(self, buf: bytes) -> list[SSEEvent]:
        """The line loop: ``buf`` is the carry and the new chunk."""
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._carry = buf
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[len(_BOM) :]
        hold = b""
        if b"\r" in buf:
            if buf.endswith(b"\r"):
                # Possibly the first half of a CRLF split across chunks.
                buf, hold = buf[:-1], b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._carry = lines.pop() + hold
        events: list[SSEEvent] = []
        for line in lines:
            if not line:
                if self._data:
                    data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                    events.append(SSEEvent(self._event or "message", data))
                    self._data = []
                self._event = ""
                continue
            name, colon, value = line.partition(b":")
            if not colon:
                value = b""
            elif value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"event":
                self._event = value.decode("utf-8", "replace")
            # Comments (empty name), id, retry and unknown fields are ignored.
        if len(self._carry) + sum(map(len, self._data)) > MAX_EVENT_BYTES:
            raise ProviderUnavailable(
                f"upstream sent an event over {MAX_EVENT_BYTES // (1024 * 1024)} MiB"
            )
        return events


def _lone_data(chunk: bytes) -> bytes | None:
    """The data of ``chunk`` when it is exactly one whole one-line ``data:`` event
    (the common case: a token per read), else None. Checked without splitting: the
    only LFs are the last two bytes, and the line holds no CR."""
    end = chunk.find(b"\n")
    whole = end == len(chunk) - 2 and chunk[-1] == 10
    if whole and chunk[:6] == b"data: " and chunk.find(b"\r", 0, end) < 0:
        return chunk[6:end]
    return None


def retry_after_seconds(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait according to ``retry-after-ms`` or ``Retry-After``, if present.

    ``Retry-After`` may be delta-seconds or an HTTP-date; ``retry-after-ms`` (sent by
    OpenAI) is preferred for its precision. ``headers`` must look names up
    case-insensitively (aiohttp's and httpx's header mappings both do).
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None and (ms := _finite(raw_ms)) is not None:
        return max(0.0, ms / 1000.0)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    seconds = _finite(raw)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with no zone information
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
