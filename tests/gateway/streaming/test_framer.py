"""SSE framing, byte for byte."""

from __future__ import annotations

import pytest

from gateway.streaming import framer as sse

CASES = [
    # (kwargs, exact bytes)
    ({"data": "hello"}, b"data: hello\n\n"),
    ({"data": b'{"a":1}'}, b'data: {"a":1}\n\n'),
    ({"data": ""}, b"data: \n\n"),
    ({"data": "a\nb"}, b"data: a\ndata: b\n\n"),
    ({"data": "a\r\nb\rc"}, b"data: a\ndata: b\ndata: c\n\n"),
    ({"data": "trailing\n"}, b"data: trailing\ndata: \n\n"),
    ({"data": "x", "event": "message"}, b"event: message\ndata: x\n\n"),
    ({"data": "x", "id": "42"}, b"id: 42\ndata: x\n\n"),
    ({"data": "x", "retry": 3000}, b"retry: 3000\ndata: x\n\n"),
    (
        {"data": "x", "event": "e", "id": "7", "retry": 10},
        b"event: e\nid: 7\nretry: 10\ndata: x\n\n",
    ),
    ({"comment": "ping"}, b": ping\n\n"),
    ({"comment": "two\nlines"}, b": two\n: lines\n\n"),
    ({"data": "h\u00e9 \U0001f389"}, "data: h\u00e9 \U0001f389\n\n".encode()),
    ({"data": "[DONE]"}, sse.DONE),
    ({"comment": "ping"}, sse.PING),
]


@pytest.mark.parametrize(("kwargs", "expected"), CASES)
def test_encode_exact_bytes(kwargs: dict[str, object], expected: bytes) -> None:
    assert sse.encode(**kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"{}", b"data: {}\n\n"),
        (b"[DONE]", b"data: [DONE]\n\n"),
        (b"a\nb", b"data: a\ndata: b\n\n"),
        (b"a\rb", b"data: a\ndata: b\n\n"),
    ],
)
def test_data_event_matches_encode(payload: bytes, expected: bytes) -> None:
    assert sse.data_event(payload) == expected
    assert sse.encode(payload) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": "x", "event": "a\nb"},
        {"data": "x", "id": "1\r2"},
        {"data": "x", "id": "a\0b"},
        {"data": "x", "retry": -1},
        {},
    ],
)
def test_encode_rejects_what_would_break_the_frame(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="SSE"):
        sse.encode(**kwargs)  # type: ignore[arg-type]
