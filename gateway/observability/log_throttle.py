"""Rate limiting of repeated log events, so one noisy client cannot flood the log.

At most ``limit`` events per key (e.g. the reason of a malformed request) are
written per ``window`` seconds; the rest are counted, and the first event of the
next window carries how many were dropped (``suppressed``).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class LogThrottle:
    """Decides whether an event with a given key may be logged now."""

    def __init__(
        self,
        limit: int = 5,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._max_keys = max_keys
        #: key -> (window start, written in it, dropped in it)
        self._state: dict[str, tuple[float, int, int]] = {}

    def admit(self, key: str) -> tuple[bool, int]:
        """(log it?, events suppressed since the last one logged for ``key``)."""
        now = self._clock()
        start, written, dropped = self._state.get(key, (now, 0, 0))
        if now - start >= self._window:
            start, written, suppressed = now, 0, dropped
            dropped = 0
        else:
            suppressed = 0
        if written >= self._limit:
            self._state[key] = (start, written, dropped + 1)
            return False, 0
        if len(self._state) >= self._max_keys and key not in self._state:
            self._state.clear()  # a bounded table: many distinct keys reset it
        self._state[key] = (start, written + 1, dropped)
        return True, suppressed
