"""Observability: the live dashboard's numbers, rolling per-second windows of one server.

:class:`LiveStats` is fed the same per-reply facts as the metrics
(:class:`~gateway.observability.metrics.ReplyFacts`), plus stream starts and ends
and request counts, into per-second buckets of the last :data:`WINDOW_SECONDS`.
Latencies are kept as counts in log-spaced bins (each 4 % wide), so a bucket's size
is bounded whatever the traffic, buckets of different workers merge by addition,
and a percentile is exact to within 2 %.

Tokens are counted when their reply ends (one observation per reply, never per
token), so a long reply's tokens all land in its last second.

Multiprocess (``--workers N``): each worker writes its raw buckets once per second
to ``live-<pid>.json`` in the shared metrics directory (atomically: write, then
rename), and a snapshot merges its own buckets with every other worker's file. A
file not refreshed for ``stale_after`` seconds is a dead worker's: its replies still
count in the windows, its in-flight streams do not. The supervisor's clean-up of the
directory removes the files.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gateway.observability.metrics import (
    END_REASONS,
    ERROR_TYPES,
    ReplyFacts,
    closed,
    time_per_output_token,
)

#: How far back the charts go, in seconds (one bucket per second).
WINDOW_SECONDS = 300
#: The window of the rates, percentiles and tables, in seconds.
RECENT_SECONDS = 60

_RATIO = 1.04
_LOG_RATIO = math.log(_RATIO)
_FILE_PREFIX = "live-"


def _bin(seconds: float) -> int:
    return math.floor(math.log(max(seconds, 1e-6)) / _LOG_RATIO)


def percentile(bins: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (nearest rank) of binned latencies; None when there are none."""
    total = sum(bins.values())
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index in sorted(bins):
        seen += bins[index]
        if seen >= rank:
            return float(_RATIO ** (index + 0.5))
    raise AssertionError("unreachable: the ranks add up to the total")


@dataclass(slots=True)
class _ModelSecond:
    replies: int = 0
    output_tokens: int = 0
    errors: int = 0
    ttft: Counter[int] = field(default_factory=Counter)


@dataclass(slots=True)
class _Second:
    """What happened in one second, in one process."""

    in_flight_start: int
    in_flight: int
    requests: int = 0
    replies: int = 0
    output_tokens: int = 0
    errors: int = 0
    ends: Counter[str] = field(default_factory=Counter)
    error_types: Counter[str] = field(default_factory=Counter)
    ttft: Counter[int] = field(default_factory=Counter)
    tpot: Counter[int] = field(default_factory=Counter)
    models: dict[str, _ModelSecond] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "f0": self.in_flight_start,
            "f": self.in_flight,
            "rq": self.requests,
            "rp": self.replies,
            "out": self.output_tokens,
            "err": self.errors,
            "ends": self.ends,
            "et": self.error_types,
            "ttft": {str(k): v for k, v in self.ttft.items()},
            "tpot": {str(k): v for k, v in self.tpot.items()},
            "m": {
                name: [m.replies, m.output_tokens, m.errors, {str(k): v for k, v in m.ttft.items()}]
                for name, m in self.models.items()
            },
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> _Second:
        def bins(raw: dict[str, int]) -> Counter[int]:
            return Counter({int(k): v for k, v in raw.items()})

        return cls(
            in_flight_start=d["f0"],
            in_flight=d["f"],
            requests=d["rq"],
            replies=d["rp"],
            output_tokens=d["out"],
            errors=d["err"],
            ends=Counter(d["ends"]),
            error_types=Counter(d["et"]),
            ttft=bins(d["ttft"]),
            tpot=bins(d["tpot"]),
            models={n: _ModelSecond(r, o, e, bins(t)) for n, (r, o, e, t) in d["m"].items()},
        )


@dataclass(slots=True)
class _Source:
    """One process's buckets, as a snapshot sees them."""

    seconds: dict[int, _Second]
    in_flight: int
    #: The last second this process is known to have been alive.
    alive_until: int
    #: Published within ``stale_after``: a live worker.
    fresh: bool = True


class LiveStats:
    """Rolling per-second counts of one process, merged with its sibling workers'."""

    def __init__(
        self,
        models: Iterable[str],
        *,
        share_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        stale_after: float = 3.0,
    ) -> None:
        self.models = frozenset(models)
        #: The multiprocess directory to publish to and read siblings from.
        self.share_dir = share_dir
        self._clock = clock
        self._stale_after = stale_after
        self._in_flight = 0
        self._seconds: dict[int, _Second] = {}
        self._file = share_dir / f"{_FILE_PREFIX}{os.getpid()}.json" if share_dir else None

    def _bucket(self) -> _Second:
        now = int(self._clock())
        bucket = self._seconds.get(now)
        if bucket is None:
            bucket = self._seconds[now] = _Second(self._in_flight, self._in_flight)
            for old in [t for t in self._seconds if t < now - WINDOW_SECONDS - 1]:
                del self._seconds[old]
        return bucket

    def stream_started(self) -> None:
        """A reply starts."""
        bucket = self._bucket()  # first: a new bucket starts with the value before
        self._in_flight += 1
        bucket.in_flight = self._in_flight

    def stream_ended(self) -> None:
        """A reply ended, however it ended."""
        bucket = self._bucket()
        self._in_flight -= 1
        bucket.in_flight = self._in_flight

    def record_request(self) -> None:
        """One API request arrived (the requests/s rate)."""
        self._bucket().requests += 1

    def record_reply(self, facts: ReplyFacts) -> None:
        """One reply finished: its tokens, latencies, end reason and error."""
        bucket = self._bucket()
        model = bucket.models.setdefault(closed(facts.model, self.models), _ModelSecond())
        bucket.replies += 1
        model.replies += 1
        bucket.output_tokens += facts.completion_tokens
        model.output_tokens += facts.completion_tokens
        bucket.ends[closed(facts.reason, END_REASONS)] += 1
        if facts.error_type:
            bucket.errors += 1
            model.errors += 1
            bucket.error_types[closed(facts.error_type, ERROR_TYPES)] += 1
        if facts.ttft is not None:
            bucket.ttft[_bin(facts.ttft)] += 1
            model.ttft[_bin(facts.ttft)] += 1
        tpot = time_per_output_token(facts)
        if tpot is not None:
            bucket.tpot[_bin(tpot)] += 1

    # --- sharing between workers ---------------------------------------------------

    def publish(self) -> None:
        """Write this process's buckets for its sibling workers (multiprocess only)."""
        if self._file is None:
            return
        body = orjson.dumps(
            {
                "updated": self._clock(),
                "in_flight": self._in_flight,
                "seconds": {str(t): s.to_json() for t, s in self._seconds.items()},
            }
        )
        partial = self._file.with_suffix(".tmp")
        partial.write_bytes(body)
        partial.replace(self._file)  # readers see the old file or the new one, never half

    async def publish_forever(self, interval: float = 1.0) -> None:
        """Publish every ``interval`` seconds until cancelled."""
        while True:
            self.publish()
            await asyncio.sleep(interval)

    def _sources(self, now: float) -> list[_Source]:
        sources = [_Source(self._seconds, self._in_flight, int(now))]
        if self.share_dir is None:
            return sources
        for path in self.share_dir.glob(f"{_FILE_PREFIX}*.json"):
            if path == self._file:
                continue
            try:
                raw = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # gone, or from an incompatible writer: skip it
            fresh = now - raw["updated"] <= self._stale_after
            seconds = {int(t): _Second.from_json(s) for t, s in raw["seconds"].items()}
            in_flight = raw["in_flight"] if fresh else 0
            sources.append(_Source(seconds, in_flight, int(raw["updated"]), fresh))
        return sources

    # --- the snapshot ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole server's numbers now (every worker's, when multiprocess)."""
        now = self._clock()
        sources = self._sources(now)
        current = int(now)
        chart = range(current - WINDOW_SECONDS, current)  # complete seconds only
        recent = range(current - RECENT_SECONDS, current)
        merged: dict[int, list[_Second]] = {}
        for source in sources:
            for t, second in source.seconds.items():
                merged.setdefault(t, []).append(second)

        def total(seconds: range, attr: str) -> int:
            return sum(getattr(s, attr) for t in seconds for s in merged.get(t, ()))

        def counts(seconds: range, attr: str) -> Counter[Any]:
            out: Counter[Any] = Counter()
            for t in seconds:
                for s in merged.get(t, ()):
                    out.update(getattr(s, attr))
            return out

        last = range(current - 1, current)
        ttft = counts(recent, "ttft")
        return {
            "time": now,
            "workers": sum(1 for s in sources if s.fresh),
            "in_flight": sum(s.in_flight for s in sources),
            "tokens_per_s_1s": total(last, "output_tokens"),
            "tokens_per_s_60s": total(recent, "output_tokens") / RECENT_SECONDS,
            "requests_per_s_1s": total(last, "requests"),
            "requests_per_s_60s": total(recent, "requests") / RECENT_SECONDS,
            "replies_60s": total(recent, "replies"),
            "ttft_p50": percentile(ttft, 0.5),
            "ttft_p99": percentile(ttft, 0.99),
            "tpot_p50": percentile(counts(recent, "tpot"), 0.5),
            "errors_60s": total(recent, "errors"),
            "errors_by_type": dict(sorted(counts(recent, "error_types").items())),
            "ends_by_reason": dict(sorted(counts(recent, "ends").items())),
            "models": _model_table(merged, recent, chart),
            "series": {
                "tokens_per_s": [sum(s.output_tokens for s in merged.get(t, ())) for t in chart],
                "in_flight": [
                    sum(col) for col in zip(*(_in_flight(s, chart) for s in sources), strict=True)
                ],
                "ttft_p50": [percentile(_sum_bins(merged.get(t, ()), "ttft"), 0.5) for t in chart],
            },
        }


def _sum_bins(seconds: Iterable[_Second], attr: str) -> Counter[int]:
    out: Counter[int] = Counter()
    for s in seconds:
        out.update(getattr(s, attr))
    return out


def _in_flight(source: _Source, chart: range) -> list[int]:
    """Streams in flight at the end of each second: the last change carried forward."""
    before = [t for t in source.seconds if t < chart.start]
    if before:
        value = source.seconds[max(before)].in_flight
    else:
        inside = [t for t in source.seconds if t in chart]
        value = source.seconds[min(inside)].in_flight_start if inside else source.in_flight
    out = []
    for t in chart:
        second = source.seconds.get(t)
        if second is not None:
            value = second.in_flight
        out.append(value if t <= source.alive_until else 0)
    return out


def _model_table(
    merged: Mapping[int, list[_Second]], recent: range, chart: range
) -> list[dict[str, Any]]:
    names = sorted({n for t in chart for s in merged.get(t, ()) for n in s.models})
    rows = []
    for name in names:
        per = [s.models[name] for t in recent for s in merged.get(t, ()) if name in s.models]
        ttft: Counter[int] = Counter()
        for m in per:
            ttft.update(m.ttft)
        rows.append(
            {
                "model": name,
                "replies": sum(m.replies for m in per),
                "tokens_per_s": sum(m.output_tokens for m in per) / RECENT_SECONDS,
                "ttft_p50": percentile(ttft, 0.5),
                "errors": sum(m.errors for m in per),
            }
        )
    return rows
