"""Validating a large request body in bounded steps, so no step holds the GIL long.

A large body is parsed in a thread (``gateway.http.offload``), but a thread only
helps while it lets go of the GIL. One ``model_validate_json`` of 100,000 messages
is a single C call of ~50 ms building 400,000 tracked objects (a model, its
``__dict__``, its extra dict and fields-set per message), which then make every
full garbage collection walk them: the event loop stood still for 60-100 ms at a
time. So a body above :data:`LARGE_BODY_BYTES` is cut at its list's items:

1. :func:`array_items` finds, with a scan that jumps from quote to quote and
   bracket to bracket, the top-level ``key`` array and the byte span of each item;
2. the body with that array cut down to its first item is validated whole;
3. the other items are validated in batches of at most :data:`BATCH_ITEMS` items
   or :data:`BATCH_BYTES` bytes and dumped to plain dicts at once: the models are
   dropped, and dicts of strings are not tracked by the garbage collector.

JSON is parsed with ``pydantic_core.from_json`` and then validated from Python (in
strict mode the same rules): validating an 8 MiB string from JSON takes 13-45 ms,
``from_json`` 3 ms. Whenever the body is not shaped as expected, or anything in it
is invalid, :func:`validate_large` returns ``None`` and the caller validates the
whole body as usual, so errors read exactly as they always did (a rare, already
slow, path).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise
from typing import Any, TypeVar

import pydantic_core
from pydantic import BaseModel, TypeAdapter, ValidationError

#: Bodies above this size are validated in batches (and parsed in a thread).
LARGE_BODY_BYTES = 256 * 1024
#: At most this many items, or about this many bytes, per batch.
BATCH_ITEMS = 512
BATCH_BYTES = 64 * 1024

M = TypeVar("M", bound=BaseModel)
Span = tuple[int, int]

_STRUCTURE = re.compile(rb'["\[\]{}]')
_JSON_SPACE = b" \t\r\n"
_QUOTE, _BACKSLASH, _COLON = 0x22, 0x5C, 0x3A
_OPENERS = b"[{"


def _string_end(body: bytes, start: int) -> int:
    """The index just after the string opened at ``start``; -1 when it never closes."""
    at = start + 1
    while True:
        at = body.find(b'"', at)
        if at < 0:
            return -1
        slashes = 0
        while body[at - 1 - slashes] == _BACKSLASH:
            slashes += 1
        if slashes % 2 == 0:
            return at + 1
        at += 1


def _is_key(body: bytes, end: int) -> bool:
    """Whether the string ending at ``end`` is followed by a colon (is an object key)."""
    at = end
    while at < len(body) and body[at] in _JSON_SPACE:
        at += 1
    return at < len(body) and body[at] == _COLON


def array_items(body: bytes, key: str) -> tuple[Span, list[Span]] | None:
    """The span of the top-level object's ``key`` array (brackets included) and of
    each of its items, when each item is an object or a string; else ``None``.

    Only the shape is found here; the pieces are parsed by a real JSON parser later,
    and a body this scan misreads fails that parse (or the checks at the end).
    """
    wanted = b'"' + key.encode() + b'"'
    stack = bytearray()
    last_key = b""
    array: Span | None = None
    opened = -1
    items: list[Span] = []
    item_start = -1
    pos = 0
    while True:
        match = _STRUCTURE.search(body, pos)
        if match is None:
            return None
        at = match.start()
        char = body[at]
        depth = len(stack)
        inside = opened >= 0 and depth == 2
        if char == _QUOTE:
            end = _string_end(body, at)
            if end < 0:
                return None
            if depth == 1 and _is_key(body, end):
                last_key = body[at:end]
            elif inside:
                items.append((at, end))
            pos = end
            continue
        if char in _OPENERS:
            if depth == 0 and (char != ord("{") or body[:at].strip(_JSON_SPACE)):
                return None  # not an object, or something before it
            if depth == 1 and char == ord("[") and last_key == wanted:
                if array is not None:
                    return None  # the key twice: leave it to the parser
                opened = at
            elif inside:
                item_start = at
            stack.append(char + 2)  # "[" + 2 == "]", "{" + 2 == "}"
        else:
            if not stack or stack.pop() != char:
                return None
            if opened >= 0 and len(stack) == 2:
                items.append((item_start, at + 1))
            elif opened >= 0 and len(stack) == 1:
                array, opened = (opened, at + 1), -1
            elif not stack:
                if body[at + 1 :].strip(_JSON_SPACE) or array is None:
                    return None
                return (array, items) if _only_commas(body, array, items) else None
        pos = at + 1


def _only_commas(body: bytes, array: Span, items: list[Span]) -> bool:
    """Whether the items found are all the array holds: one comma between each two."""
    if not items:
        return False
    if body[array[0] + 1 : items[0][0]].strip(_JSON_SPACE):
        return False
    if body[items[-1][1] : array[1] - 1].strip(_JSON_SPACE):
        return False
    return all(body[a[1] : b[0]].strip(_JSON_SPACE) == b"," for a, b in pairwise(items))


def _batches(items: Sequence[Span]) -> list[Span]:
    """Consecutive items grouped into spans of bounded count and size."""
    out: list[Span] = []
    first = 0
    for i in range(1, len(items) + 1):
        if (
            i == len(items)
            or i - first >= BATCH_ITEMS
            or items[i][1] - items[first][0] > BATCH_BYTES
        ):
            out.append((items[first][0], items[i - 1][1]))
            first = i
    return out


def _loads(data: bytes) -> Any:
    return pydantic_core.from_json(data, cache_strings="keys", allow_inf_nan=False)


def validate_large(
    model: type[M], item: TypeAdapter[list[Any]], body: bytes, key: str
) -> tuple[M, list[dict[str, Any]]] | None:
    """``model`` from ``body`` and the ``key`` list's items as dumped dicts (the
    model's own ``key`` field holds only the first item), or ``None``: see the module
    docstring."""
    found = array_items(body, key)
    if found is None:
        return None
    (_, end), items = found
    # The body with the array cut after its first item (the body itself when that is
    # its only item: no copy of a long one).
    view = memoryview(body)
    head_body = body if len(items) == 1 else b"".join((view[: items[0][1]], b"]", view[end:]))
    try:
        head = model.model_validate(_loads(head_body))
        dumped: list[dict[str, Any]] = item.dump_python(getattr(head, key), exclude_none=True)
        for a, b in _batches(items[1:]):
            batch = item.validate_python(_loads(b"[" + body[a:b] + b"]"))
            dumped.extend(item.dump_python(batch, exclude_none=True))
    except (ValueError, ValidationError):  # from_json raises ValueError
        return None
    return head, dumped
