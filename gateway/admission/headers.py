"""Admission: OpenAI's ``x-ratelimit-*`` and ``retry-after`` header values from an ``Admission``.

Pure functions; the HTTP layer decides where to put the headers (every
response, or only 429s).
"""

from __future__ import annotations

import math

from multidict import istr

from gateway.admission.store import Admission

# The names as ``istr``: see ``gateway.streaming.writer.SSE_HEADERS``.
_NAMES = {
    kind: tuple(istr(f"x-ratelimit-{what}-{kind}") for what in ("limit", "remaining", "reset"))
    for kind in ("requests", "tokens")
}
_RETRY_AFTER = istr("retry-after")
_RETRY_AFTER_MS = istr("retry-after-ms")


def _ceil_millis(seconds: float) -> int:
    # Float noise (0.02 * 1000 = 20.000000000000004) does not add 1 ms: what is over
    # a whole millisecond by less than 0.5 ns is that millisecond (as rounding to 6
    # digits first would, at a quarter of its cost: this is on a stream's
    # first-token path, six times).
    exact = seconds * 1000
    millis = math.ceil(exact)
    if millis - exact > 0.9999995:
        millis -= 1
    return millis if millis > 0 else 0


def format_reset(seconds: float) -> str:
    """A duration the way OpenAI writes it: ``20ms``, ``1s``, ``1.5s``, ``6m0s``."""
    millis = _ceil_millis(seconds)
    if millis < 1000:
        return f"{millis}ms"
    minutes, millis = divmod(millis, 60_000)
    whole, part = divmod(millis, 1000)
    secs = f"{whole}.{part:03d}".rstrip("0") if part else str(whole)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def ratelimit_headers(admission: Admission) -> dict[str, str]:
    """Headers for the limits that are set, plus ``retry-after`` on a retriable refusal."""
    headers: dict[str, str] = {}
    for kind, limit, remaining, reset in (
        (
            "requests",
            admission.limit_requests,
            admission.remaining_requests,
            admission.reset_requests,
        ),
        ("tokens", admission.limit_tokens, admission.remaining_tokens, admission.reset_tokens),
    ):
        if limit is None:
            continue
        limit_name, remaining_name, reset_name = _NAMES[kind]
        headers[limit_name] = str(limit)
        headers[remaining_name] = str(remaining or 0)
        headers[reset_name] = format_reset(reset or 0.0)
    if not admission.admitted and admission.retry_after is not None:
        # retry-after is whole seconds (RFC 9110); the SDKs prefer the -ms variant.
        millis = max(1, _ceil_millis(admission.retry_after))
        headers[_RETRY_AFTER] = str(math.ceil(millis / 1000))
        headers[_RETRY_AFTER_MS] = str(millis)
    return headers
