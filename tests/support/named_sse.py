"""Named-event SSE for tests (the Responses and Messages dialects): raw bytes, parsed events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson


@dataclass
class NamedStream:
    status: int
    headers: dict[str, str]
    raw: bytes
    #: ``(event name, JSON data)`` in order; comments (keep-alives) excluded.
    events: list[tuple[str, Any]]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.events]


def parse_named(raw: bytes, first_id: int | None = None) -> list[tuple[str, Any]]:
    """Every frame must be ``id: <n>`` (consecutive; the first also ``retry:``),
    ``event: <name>``, one ``data:`` line and a blank line. An event with a
    ``sequence_number`` (the Responses API) has it as its ``id``; else ids count
    from 1. ``first_id``: the first frame's id (a resumed stream's)."""
    assert raw.endswith(b"\n\n"), raw[-80:]
    events: list[tuple[str, Any]] = []
    expected = first_id
    for block in raw.decode().split("\n\n")[:-1]:
        lines = block.split("\n")
        if all(line.startswith(":") for line in lines):
            continue
        if not events and lines[0].startswith("retry: "):
            lines = lines[1:]
        assert lines[0].startswith("id: "), block
        sse_id = int(lines[0][len("id: ") :])
        lines = lines[1:]
        assert len(lines) == 2, block
        assert lines[0].startswith("event: "), block
        assert lines[1].startswith("data: "), block
        data = orjson.loads(lines[1][len("data: ") :])
        if expected is None:
            expected = data.get("sequence_number", 1) if isinstance(data, dict) else 1
        assert sse_id == expected, block
        if isinstance(data, dict) and "sequence_number" in data:
            assert data["sequence_number"] == sse_id, block
        expected += 1
        events.append((lines[0][len("event: ") :], data))
    return events


async def post(
    url: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> NamedStream:
    """POST ``body`` to ``url + path``; parse the body as named events when it is a stream."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}{path}", json=body, headers=headers) as resp,
    ):
        raw = await resp.read()
        events: list[tuple[str, Any]] = []
        if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            events = parse_named(raw)
        else:
            events = [("json", orjson.loads(raw))]
        return NamedStream(resp.status, dict(resp.headers), raw, events)
