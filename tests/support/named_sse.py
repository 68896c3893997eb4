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


def parse_named(raw: bytes) -> list[tuple[str, Any]]:
    """Every frame must be ``id: <n>`` (1, 2, 3...; the first also ``retry:``),
    ``event: <name>``, one ``data:`` line and a blank line."""
    assert raw.endswith(b"\n\n"), raw[-80:]
    events: list[tuple[str, Any]] = []
    for block in raw.decode().split("\n\n")[:-1]:
        lines = block.split("\n")
        if all(line.startswith(":") for line in lines):
            continue
        if not events and lines[0].startswith("retry: "):
            lines = lines[1:]
        assert lines[0] == f"id: {len(events) + 1}", block
        lines = lines[1:]
        assert len(lines) == 2, block
        assert lines[0].startswith("event: "), block
        assert lines[1].startswith("data: "), block
        events.append((lines[0][len("event: ") :], orjson.loads(lines[1][len("data: ") :])))
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
