#!/usr/bin/env python3
"""Load generator for any OpenAI-compatible streaming chat endpoint (tokenpipe, vLLM, OpenAI...).

Sends ``POST {url}/chat/completions`` with ``stream: true`` and
``stream_options: {"include_usage": true}``, parses the Server-Sent Events itself and
measures, per request: time to first token (first non-empty content delta), inter-token
latencies, end-to-end latency, output tokens (content events counted), whether the stream
ended with ``data: [DONE]``, how many finish reasons it carried (exactly one is correct)
and whether ``usage.completion_tokens`` equals the content events counted. It imports
nothing of tokenpipe. Needs aiohttp and orjson (``./scripts/serve`` installs them); rich,
when installed, draws the tables and a live progress bar on a terminal (else the report is
plain text), and ``--plot`` needs matplotlib (when it is missing, one message says so; the
report and the JSON are complete anyway).

Load shapes:
  closed loop  ``--concurrency N`` (default 8): N users, each sends its next request when
               its previous one ends.
  open loop    ``--rate R``: Poisson arrivals at R requests/s, whatever the latency.
Every run is bounded: ``--requests N`` and/or ``--duration S`` (whichever ends first;
default 100 requests), every request by ``--timeout``. ``--warmup 10`` excludes the first
10 requests from the figures, ``--warmup 2s`` those started in the first 2 seconds (the
duration is counted after it). ``--workers P`` runs the load in P processes (concurrency,
rate, requests and warmup divided between them, results merged) so that the generator is
not the bottleneck; each worker's CPU use is reported. ``--prompt-file`` holds one prompt
per line, used in turn. ``--extra-body`` is merged into every request body. ``--strict``
counts incorrect streams (finish reasons != 1, usage mismatch) as failures.

Examples::

    # 200 requests over 16 concurrent streams against a local tokenpipe
    python scripts/loadtest.py --url http://127.0.0.1:8080/v1 --model fake-fast \\
        --concurrency 16 --requests 200 --extra-body '{"fake": {"reply_tokens": 100}}'

    # open loop, 50 requests/s for 30 s from 2 processes, with a JSON report and a plot
    python scripts/loadtest.py --url http://127.0.0.1:8080/v1 --model fake --rate 50 \\
        --duration 30 --warmup 2s --workers 2 --json out.json --plot out.png

    # a hosted endpoint (key from OPENAI_API_KEY)
    python scripts/loadtest.py --url https://api.openai.com/v1 --model gpt-4o-mini \\
        --concurrency 2 --requests 10 --max-tokens 50

Exit status: 0; 1 when the error rate exceeds ``--max-error-rate`` (default 0.01) or no
request was measured; 2 for bad arguments. With a terminal on stderr (and rich) a live
progress bar is shown; Ctrl-C stops sending and reports what was measured.

Early stop: when the first 20 requests (per worker, its share of 20) all failed for the
same reason, the run stops there, since the rest would fail alike, and says what was
probably wrong (e.g. a 404 from ``--url http://host:8080``: ``did you mean
http://host:8080/v1?``).

Failure reasons: ``http_<status>``; ``in_band_error`` (an ``{"error": ...}`` event);
``timeout``; ``connection`` (no response); ``truncated`` (the stream ended without
``[DONE]``); ``bad_event`` (data that is not JSON); ``not_sse`` (a 200 answer that is not
``text/event-stream``); ``incorrect`` (only with ``--strict``).

JSON report (``--json OUT``), schema ``tokenpipe.loadtest/1``. Latencies are in ms; each
distribution has the keys ``count, min, mean, p50, p90, p99, max`` (null when empty)::

    schema, started_at (ISO 8601, UTC), config {every option; never the API key}
    requests     {measured, ok, failed, warmup, error_rate, failed_by_reason {reason: n},
                  stopped_early (null, or {after, reason, message, hint})}
    ttft_ms, itl_ms, e2e_ms      distributions over the ok requests
    throughput   {wall_s, requests_per_s, ok_requests_per_s, output_tokens,
                  output_tokens_per_s, stream_tokens_per_s_p50}
    correctness  {streams, done, one_finish_reason, usage_reported, usage_matches,
                  correct, all_correct}
    client_cpu   {workers [{worker, cpu_s, wall_s, utilisation}], main_cpu_s, total_cpu_s,
                  total_utilisation, cpu_count, saturated}
    timeline     {bucket_s, output_tokens_per_s [one value per bucket]}

``wall_s`` spans the first measured start to the last measured end. ``output_tokens``
counts the content events of all measured requests (a failed stream's tokens were still
delivered); ``stream_tokens_per_s_p50`` is the median over ok streams of tokens divided by
end-to-end time. ``correctness`` covers the streams that did not fail for another reason.
``utilisation`` is CPU time / wall time (1.0 = one core busy); ``saturated`` means a worker
went above 0.9, so the figures may describe the client rather than the server. A usage
mismatch is expected from endpoints whose chunks are not one token each.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import math
import multiprocessing
import os
import queue
import random
import re
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.sharedctypes import SynchronizedArray
    from multiprocessing.synchronize import Event
    from types import FrameType

    from rich.progress import Progress, TaskID

SCHEMA = "tokenpipe.loadtest/1"
DEFAULT_PROMPT = "Write a short story about a lighthouse keeper who collects sea glass."
SATURATED = 0.9
STARTUP_GRACE_S = 60.0
# Indexes into the shared counters the workers publish for the live progress bar.
READY, STARTED, OK, FAILED, TOKENS = range(5)
#: Stop when this many first requests (divided between the workers) all failed alike.
EARLY_STOP_AFTER = 20


# --- configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Everything a run needs, built once from the command line."""

    url: str
    model: str
    api_key: str = field(repr=False)
    concurrency: int | None
    rate: float | None
    requests: int | None
    duration: float | None
    warmup_requests: int
    warmup_seconds: float
    max_tokens: int | None
    prompts: tuple[str, ...]
    extra_body: dict[str, Any]
    workers: int
    timeout: float
    max_error_rate: float
    strict: bool
    seed: int | None
    json_out: Path | None
    plot_out: Path | None

    @property
    def endpoint(self) -> str:
        """The chat completions URL, whether ``--url`` is the base or the full path."""
        if self.url.rstrip("/").endswith("/chat/completions"):
            return self.url
        return self.url.rstrip("/") + "/chat/completions"

    def public(self) -> dict[str, Any]:
        """The configuration as written to the JSON report: no key, prompts summarised."""
        return {
            "url": self.url,
            "model": self.model,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "requests": self.requests,
            "duration": self.duration,
            "warmup_requests": self.warmup_requests,
            "warmup_seconds": self.warmup_seconds,
            "max_tokens": self.max_tokens,
            "prompt_count": len(self.prompts),
            "prompt_sample": self.prompts[0][:200],
            "extra_body": self.extra_body,
            "workers": self.workers,
            "timeout": self.timeout,
            "max_error_rate": self.max_error_rate,
            "strict": self.strict,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class Share:
    """One worker's part of the load."""

    index: int
    concurrency: int | None
    rate: float | None
    requests: int | None
    warmup_requests: int


def _part(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def split_load(cfg: Config) -> list[Share]:
    """Divide concurrency, rate, request count and warmup count between the workers."""
    n = cfg.workers
    return [
        Share(
            index=i,
            concurrency=None if cfg.concurrency is None else _part(cfg.concurrency, n, i),
            rate=None if cfg.rate is None else cfg.rate / n,
            requests=None if cfg.requests is None else _part(cfg.requests, n, i),
            warmup_requests=_part(cfg.warmup_requests, n, i),
        )
        for i in range(n)
    ]


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _warmup(text: str) -> tuple[int, float]:
    """``10`` means ten requests, ``2s`` or ``2.5s`` means seconds."""
    try:
        pair = (0, float(text[:-1])) if text.endswith("s") else (int(text), 0.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N (requests) or Ns (seconds), got {text!r}")
    if min(pair) < 0 or math.isinf(pair[1]):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return pair


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Load generator for OpenAI-compatible streaming chat endpoints.",
        epilog="See the module docstring for examples and the JSON keys.",
    )
    p.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--model", required=True)
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "none"))
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--concurrency", type=_positive_int, help="closed loop (default 8)")
    shape.add_argument("--rate", type=_positive_float, help="open loop, Poisson req/s")
    p.add_argument("--requests", type=_positive_int, help="measured requests (default 100)")
    p.add_argument("--duration", type=_positive_float, help="seconds of measured load")
    p.add_argument("--warmup", type=_warmup, default=(0, 0.0), help="N requests or Ns")
    p.add_argument("--max-tokens", type=_positive_int)
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default=DEFAULT_PROMPT)
    prompt.add_argument("--prompt-file", type=Path, help="one prompt per line")
    p.add_argument("--extra-body", type=_json_object, default={}, help="JSON object")
    p.add_argument("--workers", type=_positive_int, default=1, help="processes")
    p.add_argument("--timeout", type=_positive_float, default=60.0, help="per request, s")
    p.add_argument("--max-error-rate", type=float, default=0.01)
    p.add_argument("--strict", action="store_true", help="count incorrect streams as failed")
    p.add_argument("--seed", type=int, help="seed for the Poisson arrivals")
    p.add_argument("--json", dest="json_out", type=Path, metavar="OUT")
    p.add_argument("--plot", dest="plot_out", type=Path, metavar="OUT.png")
    return p


def _read_prompts(path: Path) -> tuple[str, ...]:
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Parse and validate the command line."""
    parser = _build_parser()
    a = parser.parse_args(argv)
    concurrency = 8 if a.rate is None and a.concurrency is None else a.concurrency
    if concurrency is not None and a.workers > concurrency:
        parser.error("--workers must not exceed --concurrency")
    try:
        prompts = _read_prompts(a.prompt_file) if a.prompt_file else (a.prompt,)
    except OSError as exc:
        parser.error(f"--prompt-file: {exc}")
    if not prompts:
        parser.error("--prompt-file holds no prompt")
    return Config(
        url=a.url,
        model=a.model,
        api_key=a.api_key,
        concurrency=concurrency,
        rate=a.rate,
        requests=100 if a.requests is None and a.duration is None else a.requests,
        duration=a.duration,
        warmup_requests=a.warmup[0],
        warmup_seconds=a.warmup[1],
        max_tokens=a.max_tokens,
        prompts=prompts,
        extra_body=a.extra_body,
        workers=a.workers,
        timeout=a.timeout,
        max_error_rate=a.max_error_rate,
        strict=a.strict,
        seed=a.seed,
        json_out=a.json_out,
        plot_out=a.plot_out,
    )


# --- Server-Sent Events ----------------------------------------------------------------

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class SSEParser:
    """Incremental ``text/event-stream`` parser (WHATWG rules) returning each event's data.

    Bytes may arrive cut anywhere, including between ``\\r`` and ``\\n`` or inside a
    UTF-8 sequence; lines end with CRLF, CR or LF; comments and fields other than
    ``data`` are skipped; an event without a final blank line is never dispatched.
    """

    def __init__(self) -> None:
        self._tail = b""
        self._data: list[bytes] = []
        self._after_cr = False
        self._started = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Consume the next bytes; return the data of every event they complete."""
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        buf = self._tail + chunk
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._tail = buf
                return []
            self._started = True
            buf = buf.removeprefix(_BOM)
        lines = _LINE_END.split(buf)
        self._tail = lines.pop()
        self._after_cr = buf.endswith(b"\r")
        return [data for line in lines if (data := self._line(line)) is not None]

    def _line(self, line: bytes) -> bytes | None:
        if not line:
            if not self._data:
                return None
            data, self._data = b"\n".join(self._data), []
            return data
        name, _, value = line.partition(b":")
        if name == b"data":
            self._data.append(value[1:] if value[:1] == b" " else value)
        return None


# --- one request ------------------------------------------------------------------------


@dataclass(slots=True)
class RequestResult:
    """What one streamed request did. Times in seconds; ``token_times`` and ``end`` are
    relative to ``start`` (epoch seconds)."""

    start: float
    warmup: bool
    token_times: array.array[float] = field(default_factory=lambda: array.array("d"))
    end: float | None = None
    status: int | None = None
    done: bool = False
    finish_reasons: int = 0
    usage_tokens: int | None = None
    error: str | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        """True when the stream ended with ``[DONE]`` and nothing failed."""
        return self.error is None

    @property
    def tokens(self) -> int:
        """Content events received."""
        return len(self.token_times)

    @property
    def correct(self) -> bool:
        """[DONE], exactly one finish reason, usage equal to the content events."""
        return self.done and self.finish_reasons == 1 and self.usage_tokens == self.tokens

    def fail(self, reason: str, message: str = "") -> None:
        """Record the first failure; later ones are consequences."""
        if self.error is None:
            self.error, self.message = reason, message[:300]

    def on_event(self, data: bytes, t: float) -> None:
        """Account for one SSE data payload received ``t`` seconds after the start."""
        if self.done or self.error is not None:
            return
        if data == b"[DONE]":
            self.done, self.end = True, t
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.fail("bad_event", data.decode(errors="replace"))
            return
        if not isinstance(obj, dict):
            self.fail("bad_event", data.decode(errors="replace"))
        elif "error" in obj:
            self.end = t
            self.fail("in_band_error", str(obj["error"]))
        else:
            self._on_chunk(obj, t)

    def _on_chunk(self, chunk: dict[str, Any], t: float) -> None:
        for choice in chunk.get("choices") or ():
            if (choice.get("delta") or {}).get("content"):
                self.token_times.append(t)
            if choice.get("finish_reason") is not None:
                self.finish_reasons += 1
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage_tokens = usage.get("completion_tokens")


async def _error_message(resp: aiohttp.ClientResponse) -> str:
    raw = await resp.content.read(65536)
    try:
        return str(orjson.loads(raw)["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return raw.decode(errors="replace")


async def _read_response(resp: aiohttp.ClientResponse, result: RequestResult, t0: float) -> None:
    if resp.status != 200:
        result.fail(f"http_{resp.status}", await _error_message(resp))
        return
    if resp.content_type != "text/event-stream":
        result.fail("not_sse", f"Content-Type {resp.content_type!r}")
        return
    parser = SSEParser()
    # Read to the end even after [DONE] so that the connection can be reused.
    async for chunk in resp.content.iter_any():
        t = time.perf_counter() - t0
        for data in parser.feed(chunk):
            result.on_event(data, t)
    if not result.done:
        result.fail("truncated", "the stream ended without [DONE]")


async def measure_request(
    session: aiohttp.ClientSession, cfg: Config, body: bytes, warmup: bool
) -> RequestResult:
    """Send one streaming request and measure it; never raises for a failed request."""
    result = RequestResult(start=time.time(), warmup=warmup)
    t0 = time.perf_counter()
    headers = {"Authorization": f"Bearer {cfg.api_key}", "Content-Type": "application/json"}
    try:
        async with asyncio.timeout(cfg.timeout):
            async with session.post(cfg.endpoint, data=body, headers=headers) as resp:
                result.status = resp.status
                await _read_response(resp, result, t0)
    except TimeoutError:
        result.fail("timeout", f"not finished within {cfg.timeout} s")
    except aiohttp.ClientPayloadError as exc:
        result.fail("truncated", str(exc))
    except (aiohttp.ClientError, OSError) as exc:
        reason = "truncated" if result.status == 200 else "connection"
        result.fail(reason, str(exc) or type(exc).__name__)
    if result.end is None:
        result.end = time.perf_counter() - t0
    return result


def build_body(cfg: Config, prompt: str) -> bytes:
    """The request body, with ``--extra-body`` merged over the defaults."""
    body: dict[str, Any] = {
        "model": cfg.model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if cfg.max_tokens is not None:
        body["max_tokens"] = cfg.max_tokens
    body.update(cfg.extra_body)
    return orjson.dumps(body)


# --- one worker process -----------------------------------------------------------------


@dataclass
class WorkerReport:
    """A worker's results and its own CPU use, sent back to the coordinator."""

    index: int
    results: list[RequestResult]
    cpu_s: float
    wall_s: float
    #: The first failure, when this worker stopped the run early (see the docstring).
    stopped_early: RequestResult | None = None


@dataclass
class WorkerFailure:
    """A worker crashed; the traceback travels instead of results."""

    index: int
    traceback: str


class Schedule:
    """Decides whether another request may start, and whether it is a warmup one."""

    def __init__(self, cfg: Config, share: Share, stop: Event) -> None:
        self._cfg, self._share, self._stop = cfg, share, stop
        self._t0 = time.perf_counter()
        self._warmups = 0
        self._measured = 0
        self._measure_t0: float | None = None

    def next(self) -> bool | None:
        """None when the load is over, else True for a warmup request."""
        now = time.perf_counter()
        if self._stop.is_set():
            return None
        in_warmup_time = now - self._t0 < self._cfg.warmup_seconds
        if in_warmup_time or self._warmups < self._share.warmup_requests:
            self._warmups += 1
            return True
        if self._share.requests is not None and self._measured >= self._share.requests:
            return None
        if self._measure_t0 is None:
            self._measure_t0 = now
        elif self._cfg.duration is not None and now - self._measure_t0 >= self._cfg.duration:
            return None
        self._measured += 1
        return False


class Runner:
    """Sends a worker's requests and publishes running counts for the progress bar."""

    def __init__(
        self,
        cfg: Config,
        share: Share,
        session: aiohttp.ClientSession,
        counters: SynchronizedArray[float],
        stop: Event,
    ) -> None:
        self._cfg, self._session, self._counters, self._stop = cfg, session, counters, stop
        self._probe = max(1, math.ceil(EARLY_STOP_AFTER / cfg.workers))
        #: The first failure, when the first ``_probe`` requests all failed like it.
        self.stopped_early: RequestResult | None = None
        start = share.index % len(cfg.prompts)
        prompts = cfg.prompts[start:] + cfg.prompts[:start]
        self._bodies = [build_body(cfg, p) for p in prompts]
        self._sent = 0
        self.results: list[RequestResult] = []

    def _publish(self, index: int, amount: float) -> None:
        with self._counters.get_lock():
            self._counters[index] += amount

    async def run(self, warmup: bool) -> None:
        """Send one request and keep its result."""
        body = self._bodies[self._sent % len(self._bodies)]
        self._sent += 1
        self._publish(STARTED, 1)
        result = await measure_request(self._session, self._cfg, body, warmup)
        if self._cfg.strict and result.ok and not result.correct:
            result.fail("incorrect", "finish reasons or usage do not match the stream")
        self.results.append(result)
        self._publish(OK if result.ok else FAILED, 1)
        self._publish(TOKENS, result.tokens)
        if len(self.results) == self._probe:
            first = self.results[0]
            if not first.ok and all(r.error == first.error for r in self.results):
                self.stopped_early = first
                self._stop.set()


async def closed_loop(runner: Runner, schedule: Schedule, users: int) -> None:
    """``users`` loops, each sending its next request when the previous one ends."""

    async def user() -> None:
        while (warmup := schedule.next()) is not None:
            await runner.run(warmup)

    await asyncio.gather(*(user() for _ in range(users)))


async def open_loop(runner: Runner, schedule: Schedule, rate: float, rng: random.Random) -> None:
    """Start requests at Poisson arrival times, ``rate`` per second, whatever the latency."""
    tasks: set[asyncio.Task[None]] = set()
    arrival = time.perf_counter()
    while True:
        arrival += rng.expovariate(rate)
        # A late generator catches up instead of stretching the schedule.
        await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
        if (warmup := schedule.next()) is None:
            break
        task = asyncio.create_task(runner.run(warmup))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)


async def run_worker(
    cfg: Config, share: Share, counters: SynchronizedArray[float], stop: Event
) -> WorkerReport:
    """Run this worker's share of the load; report its results and CPU use."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    # The per-request limit is enforced by measure_request; aiohttp's own is off.
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        runner = Runner(cfg, share, session, counters, stop)
        schedule = Schedule(cfg, share, stop)
        if share.rate is not None:
            seed = None if cfg.seed is None else cfg.seed + share.index
            await open_loop(runner, schedule, share.rate, random.Random(seed))
        else:
            await closed_loop(runner, schedule, share.concurrency or 1)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return WorkerReport(share.index, runner.results, cpu, wall, runner.stopped_early)


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def worker_main(
    cfg: Config,
    share: Share,
    counters: SynchronizedArray[float],
    go: Event,
    stop: Event,
    out: Queue[Any],
) -> None:
    """Process entry point: wait for the start signal, run, send the report back."""
    # Ctrl-C is the coordinator's to handle: it asks workers to stop via ``stop``.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with counters.get_lock():
            counters[READY] += 1
        if not go.wait(STARTUP_GRACE_S):
            return
        with asyncio.Runner(loop_factory=_event_loop_factory()) as loop:
            out.put(loop.run(run_worker(cfg, share, counters, stop)))
    except BaseException:
        out.put(WorkerFailure(share.index, traceback.format_exc()))


# --- the coordinating process -----------------------------------------------------------


class LiveProgress:
    """A rich progress bar with running figures when stderr is a terminal and rich is
    installed; else silent."""

    def __init__(self, cfg: Config) -> None:
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._by_requests = cfg.requests is not None
        if not sys.stderr.isatty():
            return
        try:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
        except ImportError:
            return

        if cfg.requests is not None:
            total = float(cfg.requests + cfg.warmup_requests)
        else:
            total = cfg.warmup_seconds + (cfg.duration or 0.0)
        self._progress = Progress(
            TextColumn("loadtest"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[figures]}"),
            console=Console(stderr=True),
            auto_refresh=False,
        )
        self._task = self._progress.add_task("load", total=total, figures="starting")
        self._progress.start()

    def update(self, counts: Sequence[float], elapsed: float) -> None:
        """Redraw with the workers' running counts."""
        if self._progress is None or self._task is None:
            return
        started, ok, failed, tokens = counts[STARTED], counts[OK], counts[FAILED], counts[TOKENS]
        rate = 1 / elapsed if elapsed > 0 else 0.0
        figures = (
            f"ok {ok:.0f}  failed {failed:.0f}  in flight {started - ok - failed:.0f}  "
            f"{(ok + failed) * rate:.1f} req/s  {tokens * rate:.0f} tok/s"
        )
        done = ok + failed if self._by_requests else elapsed
        self._progress.update(self._task, completed=done, figures=figures, refresh=True)

    def close(self) -> None:
        """Remove the bar."""
        if self._progress is not None:
            self._progress.stop()


def deadline_s(cfg: Config) -> float:
    """How long a run may take before the coordinator stops the workers."""
    limits = []
    if cfg.duration is not None:
        limits.append(cfg.duration)
    if cfg.requests is not None:
        n = cfg.requests + cfg.warmup_requests
        if cfg.rate is not None:
            limits.append(3 * n / cfg.rate + 10)
        else:
            limits.append(math.ceil(n / (cfg.concurrency or 1)) * cfg.timeout)
    return STARTUP_GRACE_S + cfg.warmup_seconds + min(limits) + cfg.timeout


class Coordinator:
    """Starts the worker processes, shows progress and gathers their reports."""

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg
        ctx = multiprocessing.get_context("spawn")
        self._counters = ctx.Array("d", 5)
        self._go, self._stop = ctx.Event(), ctx.Event()
        self._out: Queue[Any] = ctx.Queue()
        self._procs = [
            ctx.Process(
                target=worker_main,
                args=(cfg, share, self._counters, self._go, self._stop, self._out),
                daemon=True,
            )
            for share in split_load(cfg)
        ]
        self.main_cpu_s = 0.0

    def run(self) -> list[WorkerReport]:
        """Run the whole load; raise RuntimeError when a worker fails.

        Sets ``main_cpu_s``: this process's CPU time while the load ran."""
        for proc in self._procs:
            proc.start()
        progress = LiveProgress(self._cfg)
        previous = signal.signal(signal.SIGINT, self._on_interrupt)
        try:
            self._wait_ready()
            cpu0 = time.process_time()
            self._go.set()
            reports = self._gather(progress)
            self.main_cpu_s = time.process_time() - cpu0
            return reports
        finally:
            signal.signal(signal.SIGINT, previous)
            progress.close()
            self._stop.set()
            for proc in self._procs:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.terminate()

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        if self._stop.is_set():
            raise KeyboardInterrupt
        print("stopping: waiting for the requests in flight (Ctrl-C again aborts)", file=sys.stderr)
        self._stop.set()

    def _wait_ready(self) -> None:
        limit = time.monotonic() + STARTUP_GRACE_S
        while self._counters[READY] < len(self._procs):
            self._check_alive(set())
            if time.monotonic() > limit:
                raise RuntimeError("workers did not start")
            time.sleep(0.02)

    def _check_alive(self, reported: set[int]) -> None:
        for i, proc in enumerate(self._procs):
            if i not in reported and proc.exitcode not in (None, 0):
                raise RuntimeError(f"worker {i} exited with code {proc.exitcode}")

    def _gather(self, progress: LiveProgress) -> list[WorkerReport]:
        reports: dict[int, WorkerReport] = {}
        t0 = time.monotonic()
        stop_at = t0 + deadline_s(self._cfg)
        while len(reports) < len(self._procs):
            try:
                item = self._out.get(timeout=0.2)
            except queue.Empty:
                progress.update(self._counters[:], time.monotonic() - t0)
                self._check_alive(set(reports))
                self._enforce(stop_at)
                continue
            if isinstance(item, WorkerFailure):
                raise RuntimeError(f"worker {item.index} failed:\n{item.traceback}")
            reports[item.index] = item
        progress.update(self._counters[:], time.monotonic() - t0)
        return [reports[i] for i in sorted(reports)]

    def _enforce(self, stop_at: float) -> None:
        now = time.monotonic()
        if now > stop_at and not self._stop.is_set():
            print("deadline reached: stopping the workers", file=sys.stderr)
            self._stop.set()
        if now > stop_at + self._cfg.timeout + 10:
            raise RuntimeError("workers did not finish after the deadline")


# --- figures ----------------------------------------------------------------------------


def percentile(ordered: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile ``p`` (0..100) of sorted, non-empty values."""
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: Sequence[float]) -> dict[str, float | None]:
    """count, min, mean, p50, p90, p99, max of ``values`` (None when empty)."""
    ordered = sorted(values)
    if not ordered:
        return dict.fromkeys(("min", "mean", "p50", "p90", "p99", "max"), None) | {"count": 0}
    return {
        "count": len(ordered),
        "min": ordered[0],
        "mean": sum(ordered) / len(ordered),
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "max": ordered[-1],
    }


def _bucket_width(wall: float) -> float:
    for width in (0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 300):
        if wall / width <= 120:
            return float(width)
    return 600.0


def timeline(measured: Sequence[RequestResult], t0: float, wall: float) -> dict[str, Any]:
    """Output tokens per second in fixed buckets from the first measured start."""
    width = _bucket_width(wall)
    counts = [0] * max(1, math.ceil(wall / width))
    for r in measured:
        offset = r.start - t0
        for t in r.token_times:
            counts[min(max(0, int((offset + t) / width)), len(counts) - 1)] += 1
    return {"bucket_s": width, "output_tokens_per_s": [c / width for c in counts]}


def _itls(r: RequestResult) -> list[float]:
    times = r.token_times
    return [(times[i] - times[i - 1]) * 1000 for i in range(1, len(times))]


def _correctness(streams: Sequence[RequestResult]) -> dict[str, Any]:
    correct = sum(r.correct for r in streams)
    return {
        "streams": len(streams),
        "done": sum(r.done for r in streams),
        "one_finish_reason": sum(r.finish_reasons == 1 for r in streams),
        "usage_reported": sum(r.usage_tokens is not None for r in streams),
        "usage_matches": sum(r.usage_tokens == r.tokens for r in streams),
        "correct": correct,
        "all_correct": correct == len(streams),
    }


def _client_cpu(reports: Sequence[WorkerReport], main_cpu: float, wall: float) -> dict[str, Any]:
    workers = [
        {"worker": w.index, "cpu_s": w.cpu_s, "wall_s": w.wall_s, "utilisation": w.cpu_s / w.wall_s}
        for w in reports
        if w.wall_s > 0
    ]
    total = sum(w.cpu_s for w in reports) + main_cpu
    return {
        "workers": workers,
        "main_cpu_s": main_cpu,
        "total_cpu_s": total,
        "total_utilisation": total / wall if wall > 0 else 0.0,
        "cpu_count": os.cpu_count(),
        "saturated": any(w["utilisation"] > SATURATED for w in workers),
    }


def _throughput(measured: Sequence[RequestResult], ok: Sequence[RequestResult]) -> dict[str, Any]:
    t0 = min((r.start for r in measured), default=0.0)
    wall = max((r.start + (r.end or 0.0) for r in measured), default=0.0) - t0
    tokens = sum(r.tokens for r in measured)
    per_stream = [r.tokens / r.end for r in ok if r.end]
    return {
        "wall_s": wall,
        "requests_per_s": len(measured) / wall if wall > 0 else None,
        "ok_requests_per_s": len(ok) / wall if wall > 0 else None,
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / wall if wall > 0 else None,
        "stream_tokens_per_s_p50": distribution(per_stream)["p50"],
    }


def summarise(
    cfg: Config, reports: Sequence[WorkerReport], main_cpu: float, started_at: datetime
) -> dict[str, Any]:
    """All figures of a run, keyed as documented in the module docstring."""
    results = [r for w in reports for r in w.results]
    measured = [r for r in results if not r.warmup]
    ok = [r for r in measured if r.ok]
    failed = Counter(r.error for r in measured if r.error is not None)
    summary: dict[str, Any] = {
        "schema": SCHEMA,
        "started_at": started_at.isoformat(),
        "config": cfg.public(),
        "requests": {
            "measured": len(measured),
            "ok": len(ok),
            "failed": len(measured) - len(ok),
            "warmup": len(results) - len(measured),
            "error_rate": (len(measured) - len(ok)) / len(measured) if measured else None,
            "failed_by_reason": dict(failed.most_common()),
            "stopped_early": _stopped_early(cfg, reports),
        },
        "ttft_ms": distribution([r.token_times[0] * 1000 for r in ok if r.tokens]),
        "itl_ms": distribution([itl for r in ok for itl in _itls(r)]),
        "e2e_ms": distribution([(r.end or 0.0) * 1000 for r in ok]),
        "correctness": _correctness([r for r in measured if r.error in (None, "incorrect")]),
    }
    throughput = _throughput(measured, ok)
    summary["throughput"] = throughput
    summary["client_cpu"] = _client_cpu(reports, main_cpu, max(w.wall_s for w in reports))
    t0 = min((r.start for r in measured), default=0.0)
    summary["timeline"] = timeline(measured, t0, throughput["wall_s"])
    return summary


def hint(cfg: Config, reason: str) -> str:
    """What a run whose requests all failed with ``reason`` probably got wrong."""
    base = cfg.url.rstrip("/").removesuffix("/chat/completions")
    if reason == "http_404" and not base.endswith("/v1"):
        return f"did you mean {base}/v1?"
    if reason == "http_404":
        return (
            f"check --url (the API's base, e.g. http://127.0.0.1:8080/v1) and --model {cfg.model!r}"
        )
    if reason in ("http_401", "http_403"):
        return "check --api-key (default: $OPENAI_API_KEY) and that the key may use the model"
    if reason == "connection":
        return f"is a server listening at {base}?"
    return "the endpoint refuses every request alike"


def _stopped_early(cfg: Config, reports: Sequence[WorkerReport]) -> dict[str, Any] | None:
    first = next((w.stopped_early for w in reports if w.stopped_early is not None), None)
    if first is None or first.error is None:
        return None
    return {
        "after": sum(len(w.results) for w in reports),
        "reason": first.error,
        "message": first.message,
        "hint": hint(cfg, first.error),
    }


# --- output -----------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


Rows = list[tuple[str, ...]]


def report_rows(summary: dict[str, Any]) -> tuple[str, Rows, Rows]:
    """The report as plain text: a heading, the latency table (with its header row) and
    the figures (label, value)."""
    cfg, req, thr = summary["config"], summary["requests"], summary["throughput"]
    shape = f"rate {cfg['rate']}/s" if cfg["rate"] else f"concurrency {cfg['concurrency']}"
    heading = f"{cfg['url']}  model {cfg['model']}  {shape}  workers {cfg['workers']}"
    latency: Rows = [("latency (ms)", "p50", "p90", "p99", "mean", "max", "n")]
    for key, label in (
        ("ttft_ms", "time to first token"),
        ("itl_ms", "inter-token"),
        ("e2e_ms", "end to end"),
    ):
        d = summary[key]
        cells = [_fmt(d[k]) for k in ("p50", "p90", "p99", "mean", "max")]
        latency.append((label, *cells, str(d["count"])))
    reasons = ", ".join(f"{k} {v}" for k, v in req["failed_by_reason"].items()) or "-"
    rate = req["error_rate"]
    c = summary["correctness"]
    cpu = summary["client_cpu"]
    per_worker = " ".join(f"w{w['worker']} {w['utilisation']:.0%}" for w in cpu["workers"])
    warning = "  CLIENT SATURATED" if cpu["saturated"] else ""
    figures: Rows = [
        (
            "requests",
            f"{req['ok']} ok, {req['failed']} failed of {req['measured']}"
            f" (+{req['warmup']} warmup), error rate"
            f" {_fmt(None if rate is None else rate * 100, 2)}%",
        ),
        ("failures", reasons),
        (
            "throughput",
            f"{_fmt(thr.get('requests_per_s'))} req/s, "
            f"{_fmt(thr.get('output_tokens_per_s'))} output tok/s "
            f"({thr.get('output_tokens', 0)} tokens in {_fmt(thr['wall_s'], 2)} s)",
        ),
        ("per stream", f"{_fmt(thr.get('stream_tokens_per_s_p50'))} tok/s (median)"),
        (
            "correctness",
            f"{c['correct']}/{c['streams']} correct: [DONE] {c['done']}, "
            f"one finish reason {c['one_finish_reason']}, usage reported "
            f"{c['usage_reported']}, usage matches {c['usage_matches']}",
        ),
        (
            "client cpu",
            f"{per_worker}, total {cpu['total_utilisation']:.2f} of {cpu['cpu_count']} cores"
            f"{warning}",
        ),
    ]
    return heading, latency, figures


def print_report(summary: dict[str, Any]) -> None:
    """The human-readable tables on stdout: drawn by rich when installed, else plain."""
    heading, latency, figures = report_rows(summary)
    try:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        print(plain_report(heading, latency, figures), flush=True)
        return
    console = Console(highlight=False)
    console.print(Text(heading, style="bold"))
    table = Table(*latency[0])
    for row in latency[1:]:
        table.add_row(*row)
    table_of_figures = Table("figure", "value", show_header=False)
    for label, value in figures:
        table_of_figures.add_row(
            label, Text(value, style="bold red" if "SATURATED" in value else "")
        )
    console.print(table)
    console.print(table_of_figures)


def plain_report(heading: str, latency: Rows, figures: Rows) -> str:
    """The report as aligned plain text (no rich)."""
    widths = [max(len(row[i]) for row in latency) for i in range(len(latency[0]))]
    lines = [heading, ""]
    for row in latency:
        first, *rest = row
        cells = [first.ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
    lines.append("")
    label_width = max(len(label) for label, _ in figures)
    lines.extend(f"{label.ljust(label_width)}  {value}" for label, value in figures)
    return "\n".join(lines)


class PlotUnavailable(Exception):
    """``--plot`` was asked but matplotlib is not installed."""


def write_plot(summary: dict[str, Any], ttft_ms: Sequence[float], path: Path) -> None:
    """TTFT histogram and output tokens/s over time, as a PNG.

    Raises :class:`PlotUnavailable` without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(
            f"--plot {path} needs matplotlib, which is not installed"
            " (.venv/bin/pip install matplotlib); the rest of the report is complete"
        ) from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.hist(ttft_ms, bins=min(50, max(1, len(ttft_ms))))
    left.set(title="time to first token", xlabel="ms", ylabel="requests")
    line = summary["timeline"]
    xs = [i * line["bucket_s"] for i in range(len(line["output_tokens_per_s"]))]
    right.step(xs, line["output_tokens_per_s"], where="post")
    right.set(title="output tokens/s", xlabel="s since first measured request", ylabel="tokens/s")
    fig.suptitle(f"{summary['config']['url']}  {summary['config']['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def exit_code(cfg: Config, summary: dict[str, Any]) -> int:
    """0, or 1 (with the reason on stderr) when the run should fail a pipeline."""
    stopped = summary["requests"]["stopped_early"]
    if stopped is not None:
        message = f" ({stopped['message']})" if stopped["message"] else ""
        print(
            f"loadtest: stopped early, after {stopped['after']} requests: the first ones all"
            f" failed with {stopped['reason']}{message}; {stopped['hint']}",
            file=sys.stderr,
        )
        return 1
    rate = summary["requests"]["error_rate"]
    if rate is None:
        print("no request was measured", file=sys.stderr)
        return 1
    if rate > cfg.max_error_rate:
        print(
            f"error rate {rate:.2%} exceeds --max-error-rate {cfg.max_error_rate:.2%}",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run a load test from the command line; return the exit status."""
    cfg = parse_args(argv)
    started_at = datetime.now(UTC)
    coordinator = Coordinator(cfg)
    try:
        reports = coordinator.run()
    except RuntimeError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    summary = summarise(cfg, reports, coordinator.main_cpu_s, started_at)
    # The JSON first: nothing after it (tables, plot) can lose the measurements.
    if cfg.json_out is not None:
        cfg.json_out.write_text(json.dumps(summary, indent=2) + "\n")
    print_report(summary)
    status = exit_code(cfg, summary)
    if cfg.plot_out is not None:
        ok = [r for w in reports for r in w.results if r.ok and not r.warmup and r.tokens]
        try:
            write_plot(summary, [r.token_times[0] * 1000 for r in ok], cfg.plot_out)
        except PlotUnavailable as exc:
            print(f"loadtest: {exc}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
