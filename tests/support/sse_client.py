"""A minimal, strict SSE reader for tests: collects raw bytes and parsed events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


@dataclass
class Captured:
    status: int
    headers: dict[str, str]
    raw: bytes
    #: ``data`` payloads in order (comments excluded), as text.
    data: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    #: The ``id`` of each data event, in order (None when it had none).
    ids: list[int | None] = field(default_factory=list)
    #: The ``retry`` fields seen, in order.
    retries: list[int] = field(default_factory=list)

    @property
    def chunks(self) -> list[dict[str, Any]]:
        """Every JSON data event (not ``[DONE]``)."""
        return [orjson.loads(d) for d in self.data if d != "[DONE]"]

    @property
    def text(self) -> str:
        return "".join(
            c["choices"][0]["delta"].get("content") or "" for c in self.chunks if c.get("choices")
        )


def parse_events(raw: bytes) -> tuple[list[str], list[str]]:
    """Split an SSE body into data payloads and comments; every event must end in a blank line."""
    data, comments, _, _ = parse_stream(raw)
    return data, comments


def parse_stream(raw: bytes) -> tuple[list[str], list[str], list[int | None], list[int]]:
    """Data payloads, comments, each data event's ``id`` and the ``retry`` fields."""
    assert raw.endswith(b"\n\n") or not raw, f"stream does not end with a blank line: {raw[-80:]!r}"
    data: list[str] = []
    comments: list[str] = []
    ids: list[int | None] = []
    retries: list[int] = []
    for block in raw.decode("utf-8").split("\n\n")[:-1]:
        lines = block.split("\n")
        if all(line.startswith(":") for line in lines):
            comments.extend(line[1:].strip() for line in lines)
            continue
        event_id: int | None = None
        payload: list[str] = []
        for line in lines:
            if line.startswith("data: "):
                payload.append(line[len("data: ") :])
            elif line.startswith("id: "):
                event_id = int(line[len("id: ") :])
            elif line.startswith("retry: "):
                retries.append(int(line[len("retry: ") :]))
            else:
                raise AssertionError(f"unexpected field in {block!r}")
        data.append("\n".join(payload))
        ids.append(event_id)
    return data, comments, ids, retries


async def stream_request(
    url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Captured:
    """POST to ``/v1/chat/completions`` and read the whole response."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp,
    ):
        raw = await resp.read()
        captured = Captured(resp.status, dict(resp.headers), raw)
        if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            captured.data, captured.comments, captured.ids, captured.retries = parse_stream(raw)
        return captured


def chat(content: str = "Hello", **extra: Any) -> dict[str, Any]:
    """A chat request body for ``fake-fast``."""
    return {
        "model": "fake-fast",
        "messages": [{"role": "user", "content": content}],
        "stream": True,
        **extra,
    }
