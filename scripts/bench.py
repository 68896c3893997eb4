#!/usr/bin/env python3
"""Benchmark tokenpipe's streaming hot path against a direct upstream and a bare relay.

One run measures, side by side, four targets served by separate processes:

* ``direct``  a fast fake OpenAI-compatible upstream (served by this script), read directly
* ``bare``    a bare aiohttp pass-through relay (this script): the floor for any relay
* ``relay``   tokenpipe (``python -m gateway``) relaying that upstream via its OpenAI provider
* ``fake``    tokenpipe's in-process ``fake-fast`` model (no upstream)

The upstream and the load generator (this process) are pinned to one core, the process
under test to the other, and its CPU time and RSS are read from ``/proc`` around every
scenario. Scenarios:

* ``flat1``    one stream flat out (best of a few runs)
* ``ttft``     time to first token, one stream at a time, short replies
* ``paced50``  50 concurrent streams at 50 tokens/s each (the upstream paces them)
* ``paced200`` 200 concurrent streams at 50 tokens/s each
* ``flat64``   64 concurrent streams flat out
* ``held``     1,000 slow streams held open: RSS growth per open stream

    .venv/bin/python scripts/bench.py --json bench.json --markdown bench.md
    .venv/bin/python scripts/bench.py --quick
    .venv/bin/python scripts/bench.py --targets bare,relay --scenarios flat64 --py-spy out/

The same file also serves the two helper processes (``upstream``, ``bare-relay``). It
imports nothing of tokenpipe: it talks to it over HTTP, as a user would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("direct", "bare", "relay", "fake")
SCENARIOS = ("flat1", "ttft", "paced50", "paced200", "flat64", "held")
#: Counts content tokens in both the upstream's and tokenpipe's chunks (not the role chunk).
TOKEN_MARK = b'"delta":{"content":'
DONE = b"data: [DONE]\n\n"
MESSAGES = [{"role": "user", "content": "Benchmark the relay."}]
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE = resource.getpagesize()


# --- the fast fake upstream ---------------------------------------------------------------

_WORDS = ("Hello", " world", ",", " héllo", " tokens", " stream", " 🙂", ".", " The", " end")
_HEAD = b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,'
_HEAD += b'"model":"bench","choices":[{"index":0,"delta":'
_TAIL = b',"logprobs":null,"finish_reason":null}]}\n\n'
_ROLE = _HEAD + b'{"role":"assistant","content":""}' + _TAIL
_TOKENS = [_HEAD + b'{"content":' + orjson.dumps(w) + b"}" + _TAIL for w in _WORDS]
_FINISH = _HEAD + b'{},"logprobs":null,"finish_reason":"stop"}]}\n\n'


def _usage(tokens: int) -> bytes:
    usage = {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": tokens + 8}
    return (
        b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,'
        b'"model":"bench","choices":[],"usage":' + orjson.dumps(usage) + b"}\n\n"
    )


async def _upstream_chat(request: web.Request) -> web.StreamResponse:
    """One event per token, pre-encoded; ``x_fake: {tokens, delay}`` per request."""
    body = orjson.loads(await request.read())
    spec = body.get("x_fake") or {}
    tokens, delay = int(spec.get("tokens", 20)), float(spec.get("delay", 0.0))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    write = response.write
    await write(_ROLE)
    loop = asyncio.get_running_loop()
    due = loop.time()
    n = len(_TOKENS)
    for i in range(tokens):
        if delay:
            due += delay  # an absolute schedule: no drift under load
            pause = due - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
        await write(_TOKENS[i % n])
    await write(_FINISH)
    if (body.get("stream_options") or {}).get("include_usage"):
        await write(_usage(tokens))
    await write(DONE)
    await response.write_eof()
    return response


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "bench", "object": "model"}]})


def serve_upstream(port: int) -> None:
    app = web.Application()
    app.add_routes(
        [web.post("/v1/chat/completions", _upstream_chat), web.get("/v1/models", _models)]
    )
    _run_app(app, port)


# --- the bare relay: the floor ----------------------------------------------------------

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def _bare_chat(request: web.Request) -> web.StreamResponse:
    """Open the upstream stream and write every chunk through as it arrives."""
    body = await request.read()
    session = request.app[SESSION]
    headers = {"Content-Type": "application/json", "Authorization": "Bearer none"}
    async with session.post(
        request.app[UPSTREAM] + "/chat/completions", data=body, headers=headers
    ) as upstream:
        response = web.StreamResponse(
            status=upstream.status,
            headers={"Content-Type": upstream.headers.get("Content-Type", "text/event-stream")},
        )
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
    return response


async def _bare_session(app: web.Application) -> Any:
    app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    yield
    await app[SESSION].close()


def serve_bare(port: int, upstream: str) -> None:
    app = web.Application()
    app[UPSTREAM] = upstream
    app.cleanup_ctx.append(_bare_session)
    app.add_routes([web.post("/v1/chat/completions", _bare_chat), web.get("/v1/models", _models)])
    _run_app(app, port)


def _run_app(app: web.Application, port: int) -> None:
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        handler_cancellation=True,
        access_log=None,
        print=None,
        loop=loop,
    )


# --- processes --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pin(cores: set[int] | None) -> Callable[[], None]:
    def setup() -> None:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
        if cores is not None:
            os.sched_setaffinity(0, cores)

    return setup


@dataclass
class Server:
    """A process serving an OpenAI-compatible ``/v1`` on loopback."""

    name: str
    proc: subprocess.Popen[bytes]
    base_url: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_server(
    name: str,
    command: list[str],
    port: int,
    cores: set[int] | None,
    log: Path,
    env: dict[str, str],
    cwd: Path = ROOT,
) -> Server:
    """Start ``command`` in ``cwd`` (another checkout runs its own code) and wait for it."""
    out = log.open("wb")
    proc = subprocess.Popen(
        command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_pin(cores)
    )
    server = Server(name, proc, f"http://127.0.0.1:{port}/v1")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{name} did not start listening; see {log}")


# --- the load generator -----------------------------------------------------------------


@dataclass
class Stream:
    """What one streamed request delivered."""

    tokens: int = 0
    ttft: float | None = None
    duration: float = 0.0
    done: bool = False
    error: str | None = None


@dataclass
class Target:
    """How to ask one target for a reply of ``tokens`` tokens at ``delay`` s per token."""

    name: str
    url: str
    model: str
    in_process_fake: bool

    def body(self, tokens: int, delay: float) -> bytes:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.in_process_fake:
            rate = 1.0 / delay if delay else 0.0
            body["fake"] = {"reply_tokens": tokens, "tokens_per_second": rate}
        else:
            body["x_fake"] = {"tokens": tokens, "delay": delay}
        return orjson.dumps(body)


async def read_stream(
    session: aiohttp.ClientSession, target: Target, body: bytes, first: asyncio.Event | None = None
) -> Stream:
    """Send one request and count its content tokens, cheaply (no JSON parsing)."""
    result = Stream()
    started = time.perf_counter()
    keep = len(TOKEN_MARK) - 1
    try:
        async with session.post(
            target.url + "/chat/completions",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": "Bearer none"},
        ) as response:
            if response.status != 200:
                result.error = f"http_{response.status}"
                return result
            carry = tail = b""
            async for chunk in response.content.iter_any():
                buf = carry + chunk if carry else chunk
                found = buf.count(TOKEN_MARK)
                if found:
                    if result.ttft is None:
                        result.ttft = time.perf_counter() - started
                        if first is not None:
                            first.set()
                    result.tokens += found
                carry = buf[-keep:]
                tail = (tail + chunk)[-len(DONE) :]
            result.done = tail == DONE
    except aiohttp.ClientError as exc:
        result.error = type(exc).__name__
    result.duration = time.perf_counter() - started
    return result


@dataclass
class Run:
    """Streams run together, and what the process under test spent on them."""

    streams: list[Stream]
    wall: float
    cpu: float
    side_cpu: float

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.streams)

    @property
    def failed(self) -> int:
        return sum(1 for s in self.streams if s.error or not s.done)

    def tokens_per_s(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0

    def cpu_ms_per_1k(self) -> float:
        return self.cpu * 1000.0 / self.tokens * 1000.0 if self.tokens else float("nan")


class Bench:
    """Runs the scenarios against one target while measuring its process."""

    def __init__(self, target: Target, server: Server, side: list[Server]) -> None:
        self.target = target
        self.server = server
        self.side = side  # processes sharing the load generator's core
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=600),
        )

    async def close(self) -> None:
        await self.session.close()

    def _side_cpu(self) -> float:
        return time.process_time() + sum(s.cpu_seconds() for s in self.side)

    async def run(self, streams: int, tokens: int, delay: float) -> Run:
        body = self.target.body(tokens, delay)
        cpu, side, wall = self.server.cpu_seconds(), self._side_cpu(), time.perf_counter()
        results = await asyncio.gather(
            *(read_stream(self.session, self.target, body) for _ in range(streams))
        )
        wall = time.perf_counter() - wall
        return Run(list(results), wall, self.server.cpu_seconds() - cpu, self._side_cpu() - side)

    async def warm(self, tokens: int, streams: int = 4) -> None:
        """Open connections and fill caches (the fake caches a reply per length)."""
        await self.run(streams, tokens, 0.0)

    async def held(self, streams: int, settle: float) -> dict[str, float]:
        """Open ``streams`` slow streams, wait until each got a token, measure RSS."""
        await self.warm(20)
        await asyncio.sleep(0.5)
        before = self.server.rss_bytes()
        body = self.target.body(100_000, 1.0)
        firsts = [asyncio.Event() for _ in range(streams)]
        tasks = [
            asyncio.create_task(read_stream(self.session, self.target, body, first))
            for first in firsts
        ]
        try:
            async with asyncio.timeout(120):
                for first in firsts:
                    await first.wait()
            await asyncio.sleep(settle)
            after = self.server.rss_bytes()
            open_ = sum(1 for t in tasks if not t.done())
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return {
            "streams": open_,
            "rss_before_mb": before / 2**20,
            "rss_held_mb": after / 2**20,
            "kb_per_stream": (after - before) / 1024 / max(open_, 1),
        }


@dataclass
class Sizes:
    flat1_tokens: int = 20_000
    flat1_runs: int = 3
    ttft_requests: int = 100
    paced_seconds: float = 8.0
    flat64_tokens: int = 2_000
    held_streams: int = 1_000
    settle: float = 2.0


QUICK = Sizes(
    flat1_tokens=5_000,
    flat1_runs=2,
    ttft_requests=40,
    paced_seconds=3.0,
    flat64_tokens=500,
    held_streams=1_000,
    settle=1.0,
)

PACE = 0.02  # 50 tokens/s


def _check(run: Run, what: str) -> None:
    if run.failed:
        errors = {s.error or "truncated" for s in run.streams if s.error or not s.done}
        print(f"  ! {what}: {run.failed} of {len(run.streams)} streams failed: {errors}")


def _sustained(run: Run) -> float | None:
    """Tokens/s of all streams after each one's first token: delivery once started,
    without the start-up burst (which the TTFT scenario measures)."""
    total = 0.0
    for s in run.streams:
        if s.ttft is None or s.tokens < 2 or s.duration <= s.ttft:
            continue
        total += (s.tokens - 1) / (s.duration - s.ttft)
    return total or None


def _run_summary(run: Run) -> dict[str, Any]:
    durations = sorted(s.duration for s in run.streams)
    return {
        "sustained_tokens_per_s": _sustained(run),
        "streams": len(run.streams),
        "failed": run.failed,
        "tokens": run.tokens,
        "wall_s": run.wall,
        "tokens_per_s": run.tokens_per_s(),
        "cpu_s": run.cpu,
        "cpu_ms_per_1k_tokens": run.cpu_ms_per_1k(),
        "cpu_utilisation": run.cpu / run.wall if run.wall else None,
        "side_core_utilisation": run.side_cpu / run.wall if run.wall else None,
        "stream_s_p50": durations[len(durations) // 2],
        "stream_s_max": durations[-1],
    }


async def bench_target(
    bench: Bench, scenarios: list[str], sizes: Sizes, spy: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    name = bench.target.name
    if "flat1" in scenarios:
        await bench.warm(sizes.flat1_tokens)
        runs = []
        for _ in range(sizes.flat1_runs):
            run = await bench.run(1, sizes.flat1_tokens, 0.0)
            _check(run, f"{name} flat1")
            runs.append(run)
        best = max(runs, key=Run.tokens_per_s)
        out["flat1"] = _run_summary(best)
        out["flat1"]["cpu_ms_per_1k_tokens"] = statistics.median(r.cpu_ms_per_1k() for r in runs)
        print(f"  flat1    {best.tokens_per_s():>10,.0f} tok/s")
    if "ttft" in scenarios:
        await bench.warm(5)
        ttfts = []
        for _ in range(sizes.ttft_requests):
            run = await bench.run(1, 5, 0.0)
            _check(run, f"{name} ttft")
            if run.streams[0].ttft is not None:
                ttfts.append(run.streams[0].ttft * 1000)
        ttfts.sort()
        out["ttft"] = {
            "requests": len(ttfts),
            "p50_ms": statistics.median(ttfts),
            "p90_ms": ttfts[int(len(ttfts) * 0.9)],
            "min_ms": ttfts[0],
        }
        print(f"  ttft     p50 {out['ttft']['p50_ms']:.2f} ms")
    paced_tokens = int(sizes.paced_seconds / PACE)
    for scenario, streams in (("paced50", 50), ("paced200", 200)):
        if scenario in scenarios:
            await bench.warm(paced_tokens, streams)
            with spy(bench.server, f"{name}-{scenario}"):
                run = await bench.run(streams, paced_tokens, PACE)
            _check(run, f"{name} {scenario}")
            out[scenario] = _run_summary(run)
            print(
                f"  {scenario:<8} {run.tokens_per_s():>10,.0f} tok/s "
                f"{run.cpu_ms_per_1k():6.1f} CPU ms/1k tok"
            )
    if "flat64" in scenarios:
        await bench.warm(sizes.flat64_tokens)
        with spy(bench.server, f"{name}-flat64"):
            run = await bench.run(64, sizes.flat64_tokens, 0.0)
        _check(run, f"{name} flat64")
        out["flat64"] = _run_summary(run)
        print(
            f"  flat64   {run.tokens_per_s():>10,.0f} tok/s "
            f"{run.cpu_ms_per_1k():6.1f} CPU ms/1k tok"
        )
    if "held" in scenarios:
        out["held"] = await bench.held(sizes.held_streams, sizes.settle)
        print(f"  held     {out['held']['kb_per_stream']:.1f} KB/stream")
    return out


# --- the run ----------------------------------------------------------------------------


@dataclass
class Options:
    targets: list[str]
    scenarios: list[str]
    sizes: Sizes
    py_spy: Path | None
    workdir: Path
    #: YAML appended to tokenpipe's config (e.g. ``auth:`` keys, ``redis_url``).
    gateway_yaml: str = ""
    results: dict[str, Any] = field(default_factory=dict)


class PySpy:
    """``py-spy record`` around a scenario, when asked for."""

    def __init__(self, out: Path | None) -> None:
        self.out = out

    @contextlib.contextmanager
    def __call__(self, server: Server, label: str) -> Any:
        if self.out is None or server.name == "direct":
            yield
            return
        self.out.mkdir(parents=True, exist_ok=True)
        spy_bin = Path(sys.executable).with_name("py-spy")
        command = [str(spy_bin), "record", "--pid", str(server.pid), "--rate", "250"]
        command += ["--format", "speedscope", "-o", str(self.out / f"{label}.speedscope.json")]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # py-spy attaches
        try:
            yield
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)


def _cores() -> tuple[set[int] | None, set[int] | None]:
    """(load generator + upstream, process under test), or no pinning on one core."""
    try:
        available = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None, None
    if len(available) < 2:
        return None, None
    return {available[0]}, {available[1]}


async def _bench_one(target: Target, server: Server, side: list[Server], opts: Options) -> None:
    print(f"{target.name}: {server.base_url} (pid {server.pid})")
    bench = Bench(target, server, side)
    try:
        opts.results[target.name] = await bench_target(
            bench, opts.scenarios, opts.sizes, PySpy(opts.py_spy)
        )
    finally:
        await bench.close()


def run_all(opts: Options) -> dict[str, Any]:
    gen_core, test_core = _cores()
    if gen_core is not None:
        os.sched_setaffinity(0, gen_core)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
    env = {**os.environ, "TOKENPIPE_LOG_LEVEL": "warning", "PYTHONUNBUFFERED": "1"}
    me = [sys.executable, str(Path(__file__).resolve())]
    logs = opts.workdir
    port = free_port()
    upstream = start_server(
        "direct", [*me, "upstream", "--port", str(port)], port, gen_core, logs / "upstream.log", env
    )
    try:
        for name in opts.targets:
            if name == "direct":
                # The upstream shares the generator's core here: it is the reference.
                target = Target("direct", upstream.base_url, "bench", False)
                asyncio.run(_bench_one(target, upstream, [], opts))
                continue
            port = free_port()
            if name == "bare":
                command = [*me, "bare-relay", "--port", str(port), "--upstream", upstream.base_url]
            else:
                config = logs / "gateway.yaml"
                config.write_text(
                    "models:\n  - name: relay\n    provider: openai\n"
                    f"    base_url: {upstream.base_url}\n    api_key: none\n" + opts.gateway_yaml
                )
                command = [sys.executable, "-m", "gateway", "--host", "127.0.0.1"]
                command += ["--port", str(port), "--config", str(config)]
            server = start_server(name, command, port, test_core, logs / f"{name}.log", env)
            try:
                model = {"bare": "bench", "relay": "relay", "fake": "fake-fast"}[name]
                target = Target(name, server.base_url, model, name == "fake")
                side = [] if name == "fake" else [upstream]
                asyncio.run(_bench_one(target, server, side, opts))
            finally:
                server.stop()
    finally:
        upstream.stop()
    return opts.results


# --- the report -------------------------------------------------------------------------


def _get(results: dict[str, Any], target: str, *keys: str) -> Any:
    value: Any = results.get(target)
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None or not b:
        return None
    return float(a) / float(b)


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals, each with its measured value."""
    r = results
    cpu_paced = _ratio(
        _get(r, "relay", "paced200", "cpu_ms_per_1k_tokens"),
        _get(r, "bare", "paced200", "cpu_ms_per_1k_tokens"),
    )
    cpu_flat = _ratio(
        _get(r, "relay", "flat64", "cpu_ms_per_1k_tokens"),
        _get(r, "bare", "flat64", "cpu_ms_per_1k_tokens"),
    )
    one = _ratio(
        _get(r, "relay", "flat1", "tokens_per_s"), _get(r, "bare", "flat1", "tokens_per_s")
    )
    ttft_relay, ttft_direct = (
        _get(r, "relay", "ttft", "p50_ms"),
        _get(r, "direct", "ttft", "p50_ms"),
    )
    ttft_added = ttft_relay - ttft_direct if None not in (ttft_relay, ttft_direct) else None
    kept = _ratio(
        _get(r, "relay", "paced200", "tokens_per_s"), _get(r, "direct", "paced200", "tokens_per_s")
    )
    sustained = _ratio(
        _get(r, "relay", "paced200", "sustained_tokens_per_s"),
        _get(r, "direct", "paced200", "sustained_tokens_per_s"),
    )
    mem = _get(r, "relay", "held", "kb_per_stream")
    fake = _get(r, "fake", "flat1", "tokens_per_s")

    def goal(
        name: str, value: float | None, limit: float, higher: bool, unit: str
    ) -> dict[str, Any]:
        met = None if value is None else (value >= limit if higher else value <= limit)
        bound = ">=" if higher else "<="
        return {"goal": f"{name} {bound} {limit:g}{unit}", "value": value, "met": met, "unit": unit}

    return [
        goal("relay CPU/token vs bare (200x50 tok/s)", cpu_paced, 1.3, False, "x"),
        goal("relay CPU/token vs bare (64 flat out)", cpu_flat, 1.3, False, "x"),
        goal("relay one-stream tok/s vs bare", one, 0.8, True, "x"),
        goal("relay TTFT added at p50", ttft_added, 1.0, False, " ms"),
        goal("relay 200x50 tok/s delivery vs direct", kept, 0.98, True, "x"),
        goal(
            "relay 200x50 tok/s sustained (after first token) vs direct", sustained, 0.98, True, "x"
        ),
        goal("relay memory per open stream", mem, 30.0, False, " KB"),
        goal("fake-fast one-stream tok/s", fake, 50_000, True, ""),
    ]


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


ROWS: list[tuple[str, tuple[str, ...], str]] = [
    ("1 stream flat out, tok/s", ("flat1", "tokens_per_s"), ",.0f"),
    ("1 stream flat out, CPU ms/1k tok", ("flat1", "cpu_ms_per_1k_tokens"), ".1f"),
    ("TTFT p50, ms (5-token replies)", ("ttft", "p50_ms"), ".2f"),
    ("50x50 tok/s: delivered tok/s", ("paced50", "tokens_per_s"), ",.0f"),
    ("50x50 tok/s: CPU ms/1k tok", ("paced50", "cpu_ms_per_1k_tokens"), ".1f"),
    ("200x50 tok/s: delivered tok/s", ("paced200", "tokens_per_s"), ",.0f"),
    ("200x50 tok/s: CPU ms/1k tok", ("paced200", "cpu_ms_per_1k_tokens"), ".1f"),
    ("200x50 tok/s: CPU use of its core", ("paced200", "cpu_utilisation"), ".2f"),
    ("64 streams flat out, tok/s", ("flat64", "tokens_per_s"), ",.0f"),
    ("64 streams flat out, CPU ms/1k tok", ("flat64", "cpu_ms_per_1k_tokens"), ".1f"),
    ("1,000 held streams: KB RSS/stream", ("held", "kb_per_stream"), ".1f"),
]


def derived(results: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per target: the ratios to the bare relay and to direct the issue asks for."""
    out: dict[str, dict[str, float | None]] = {}
    ttft_direct = _get(results, "direct", "ttft", "p50_ms")
    for name in results:
        ttft = _get(results, name, "ttft", "p50_ms")
        out[name] = {
            "ttft_added_ms": ttft - ttft_direct
            if name in ("bare", "relay") and None not in (ttft, ttft_direct)
            else None,
            "paced200_kept_vs_direct": _ratio(
                _get(results, name, "paced200", "tokens_per_s"),
                _get(results, "direct", "paced200", "tokens_per_s"),
            ),
            "paced200_sustained_vs_direct": _ratio(
                _get(results, name, "paced200", "sustained_tokens_per_s"),
                _get(results, "direct", "paced200", "sustained_tokens_per_s"),
            ),
            "flat1_tok_s_vs_bare": _ratio(
                _get(results, name, "flat1", "tokens_per_s"),
                _get(results, "bare", "flat1", "tokens_per_s"),
            ),
            "paced200_cpu_vs_bare": _ratio(
                _get(results, name, "paced200", "cpu_ms_per_1k_tokens"),
                _get(results, "bare", "paced200", "cpu_ms_per_1k_tokens"),
            ),
            "flat64_cpu_vs_bare": _ratio(
                _get(results, name, "flat64", "cpu_ms_per_1k_tokens"),
                _get(results, "bare", "flat64", "cpu_ms_per_1k_tokens"),
            ),
        }
    return out


DERIVED_ROWS = [
    ("TTFT added vs direct, ms", "ttft_added_ms", ".2f"),
    ("200x50 delivery vs direct", "paced200_kept_vs_direct", ".1%"),
    ("200x50 sustained vs direct", "paced200_sustained_vs_direct", ".1%"),
    ("1-stream tok/s vs bare", "flat1_tok_s_vs_bare", ".2f"),
    ("CPU/token vs bare (200x50)", "paced200_cpu_vs_bare", ".2f"),
    ("CPU/token vs bare (64 flat)", "flat64_cpu_vs_bare", ".2f"),
]


def table(results: dict[str, Any], markdown: bool) -> str:
    names = [t for t in TARGETS if t in results]
    ratios = derived(results)
    rows = [
        [label, *(_fmt(_get(results, n, *keys), spec) for n in names)] for label, keys, spec in ROWS
    ]
    rows += [
        [label, *(_fmt(ratios[n][key], spec) for n in names)] for label, key, spec in DERIVED_ROWS
    ]
    header = ["", *names]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = [
            "  ".join(
                cell.rjust(w) if i else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
            for row in [header, *rows]
        ]
    return "\n".join(lines)


def goals_text(items: list[dict[str, Any]], markdown: bool) -> str:
    lines = []
    for item in items:
        value = item["value"]
        shown = "-" if value is None else f"{value:,.2f}{item['unit']}"
        verdict = {True: "met", False: "MISSED", None: "not measured"}[item["met"]]
        lines.append(f"{'- ' if markdown else '  '}{item['goal']}: {shown} ({verdict})")
    return "\n".join(lines)


def report(payload: dict[str, Any], markdown: bool) -> str:
    results = payload["results"]
    head = f"tokenpipe bench: `{payload['command']}`" if markdown else payload["command"]
    return "\n\n".join(
        [
            head,
            table(results, markdown),
            "Goals:" if not markdown else "**Goals**",
            goals_text(payload["goals"], markdown),
        ]
    )


# --- command line -----------------------------------------------------------------------


def _csv(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        unknown = set(items) - set(allowed)
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown: {', '.join(sorted(unknown))}")
        return items

    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="serve")
    up = sub.add_parser("upstream", help="serve the fast fake upstream")
    up.add_argument("--port", type=int, required=True)
    bare = sub.add_parser("bare-relay", help="serve the bare relay")
    bare.add_argument("--port", type=int, required=True)
    bare.add_argument("--upstream", required=True, help="upstream base URL, ending in /v1")
    parser.add_argument("--quick", action="store_true", help="smaller scenarios (about 2 min)")
    parser.add_argument("--targets", type=_csv(TARGETS), default=list(TARGETS))
    parser.add_argument("--scenarios", type=_csv(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    parser.add_argument("--markdown", type=Path, help="write the table as Markdown")
    parser.add_argument(
        "--gateway-yaml",
        type=Path,
        help="YAML file appended to tokenpipe's config: e.g. auth keys (the load sends "
        "'Authorization: Bearer none', so a key 'none') or redis_url",
    )
    parser.add_argument(
        "--py-spy", type=Path, help="record py-spy profiles of the paced and flat64 scenarios here"
    )
    args = parser.parse_args()
    if args.serve == "upstream":
        serve_upstream(args.port)
        return
    if args.serve == "bare-relay":
        serve_bare(args.port, args.upstream)
        return
    sizes = QUICK if args.quick else Sizes()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="tokenpipe-bench-") as tmp:
        extra = args.gateway_yaml.read_text() if args.gateway_yaml else ""
        opts = Options(args.targets, args.scenarios, sizes, args.py_spy, Path(tmp), extra)
        results = run_all(opts)
    payload = {
        "schema": "tokenpipe.bench/1",
        "command": " ".join(["python", "scripts/bench.py", *sys.argv[1:]]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "cpu_count": os.cpu_count(),
        "sizes": asdict(sizes),
        "results": results,
        "derived": derived(results),
        "goals": goals(results),
    }
    print()
    print(report(payload, markdown=False))
    if args.json:
        args.json.write_text(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())
    if args.markdown:
        args.markdown.write_text(report(payload, markdown=True) + "\n")


if __name__ == "__main__":
    main()
