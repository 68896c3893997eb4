#!/usr/bin/env python3
"""Does one maximum-size request hold the gateway's event loop? ``/healthz`` latency.

While a heavy request is processed, this script probes ``GET /healthz`` at 20 Hz and
follows one paced stream (``fake`` at 50 tokens/s); it reports the probe's p50, p99
and worst latency and the paced stream's worst gap between tokens. Heavy requests:

* ``one-message``    an ~8 MiB body of one long message (just under the default limit)
* ``many-messages``  a body of 100,000 short messages
* ``long-reply``     a streamed ``fake.reply_tokens`` reply at its maximum (100,000)
* ``together``       the three at once

Each scenario runs ``--repeat`` times; the figures are the median over the runs (and
the worst of any run in ``worst``). The heavy requests are sent by a child process
(this file, ``send``), so that this process's event loop only probes: the latency
measured is the gateway's, not the load generator's.

    .venv/bin/python scripts/bench_fairness.py                 # starts a gateway
    .venv/bin/python scripts/bench_fairness.py --url http://127.0.0.1:8080 --repeat 5
    .venv/bin/python scripts/bench_fairness.py --scenarios one-message --json out.json

It imports nothing of tokenpipe: it talks to it over HTTP, as a user would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("one-message", "many-messages", "long-reply", "together")
#: The gateway's default ``max_body_bytes``, and the fake provider's longest reply.
MAX_BODY = 8 * 1024 * 1024
MAX_REPLY_TOKENS = 100_000
PROBE_HZ = 20
MODEL = "fake-fast"


def one_message_body(size: int = MAX_BODY) -> bytes:
    """A body just under ``size``: one long user message."""
    head = (
        b'{"model":"' + MODEL.encode() + b'","max_tokens":2,"messages":[{"role":"user","content":"'
    )
    tail = b'"}]}'
    word = b"lorem ipsum dolor sit amet, "
    filler = (word * (size // len(word) + 1))[: size - len(head) - len(tail) - 1024]
    return head + filler + tail


def many_messages_body(count: int = 100_000) -> bytes:
    """A body of ``count`` short messages, alternating user and assistant."""
    roles = ("user", "assistant")
    messages = [{"role": roles[i % 2], "content": f"message {i}"} for i in range(count - 1)]
    messages.append({"role": "user", "content": "and the last one"})
    return orjson.dumps({"model": MODEL, "max_tokens": 2, "messages": messages})


def long_reply_body() -> bytes:
    """A streamed reply of the fake provider's maximum length."""
    return orjson.dumps(
        {
            "model": MODEL,
            "stream": True,
            "messages": [{"role": "user", "content": "go"}],
            "fake": {"reply_tokens": MAX_REPLY_TOKENS},
        }
    )


BODIES = {
    "one-message": one_message_body,
    "many-messages": many_messages_body,
    "long-reply": long_reply_body,
}


def scenario_bodies(scenario: str) -> list[str]:
    return list(BODIES) if scenario == "together" else [scenario]


# --- the heavy client (a child process) ------------------------------------------------


async def _send_all(url: str, files: list[Path]) -> list[int]:
    async def one(session: aiohttp.ClientSession, path: Path) -> int:
        data = path.read_bytes()
        headers = {"Content-Type": "application/json"}
        async with session.post(f"{url}/v1/chat/completions", data=data, headers=headers) as resp:
            await resp.read()
            return resp.status

    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        return list(await asyncio.gather(*(one(session, f) for f in files)))


def send_main(url: str, files: list[str]) -> None:
    statuses = asyncio.run(_send_all(url, [Path(f) for f in files]))
    print(orjson.dumps(statuses).decode())


# --- the probes -------------------------------------------------------------------------


async def probe_healthz(
    session: aiohttp.ClientSession, url: str, stop: asyncio.Event, out: list[float]
) -> None:
    """GET /healthz at :data:`PROBE_HZ`; append each answer's latency (seconds)."""
    while not stop.is_set():
        start = time.perf_counter()
        async with session.get(f"{url}/healthz") as resp:
            await resp.read()
        out.append(time.perf_counter() - start)
        await asyncio.sleep(1 / PROBE_HZ)


async def paced_stream(
    session: aiohttp.ClientSession, url: str, stop: asyncio.Event, gaps: list[float]
) -> None:
    """Streams at 50 tokens/s until ``stop``; append the gaps between received chunks."""
    body = {
        "model": MODEL,
        "stream": True,
        "messages": [{"role": "user", "content": "keep pace"}],
        "fake": {"reply_tokens": 100_000, "tokens_per_second": 50},
    }
    async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
        last: float | None = None
        async for _ in resp.content.iter_any():
            now = time.perf_counter()
            if last is not None:
                gaps.append(now - last)
            last = now
            if stop.is_set():
                return


@dataclass
class Figures:
    scenario: str
    statuses: list[int]
    probes: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    stream_gap_max_ms: float
    seconds: float


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_once(url: str, scenario: str, folder: Path) -> Figures:
    files = []
    for name in scenario_bodies(scenario):
        path = folder / f"{name}.json"
        if not path.exists():
            path.write_bytes(BODIES[name]())
        files.append(str(path))
    stop = asyncio.Event()
    latencies: list[float] = []
    gaps: list[float] = []
    async with aiohttp.ClientSession() as session:
        prober = asyncio.create_task(probe_healthz(session, url, stop, latencies))
        pacer = asyncio.create_task(paced_stream(session, url, stop, gaps))
        await asyncio.sleep(0.5)
        latencies.clear()
        gaps.clear()
        start = time.perf_counter()
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "send", url, *files, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await child.communicate()
        seconds = time.perf_counter() - start
        await asyncio.sleep(0.2)
        stop.set()
        await prober
        pacer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pacer
    statuses = orjson.loads(out) if out else []
    return Figures(
        scenario=scenario,
        statuses=statuses,
        probes=len(latencies),
        p50_ms=_quantile(latencies, 0.5) * 1000,
        p99_ms=_quantile(latencies, 0.99) * 1000,
        max_ms=max(latencies) * 1000,
        stream_gap_max_ms=max(gaps, default=0.0) * 1000,
        seconds=seconds,
    )


def median_of(runs: list[Figures]) -> dict[str, object]:
    """The median of each figure over the runs, and the worst probe of any run."""
    return {
        "scenario": runs[0].scenario,
        "runs": len(runs),
        "statuses": sorted({s for r in runs for s in r.statuses}),
        "probes": statistics.median(r.probes for r in runs),
        "p50_ms": statistics.median(r.p50_ms for r in runs),
        "p99_ms": statistics.median(r.p99_ms for r in runs),
        "max_ms": statistics.median(r.max_ms for r in runs),
        "worst_ms": max(r.max_ms for r in runs),
        "stream_gap_max_ms": statistics.median(r.stream_gap_max_ms for r in runs),
        "seconds": statistics.median(r.seconds for r in runs),
    }


# --- a gateway of our own ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def started_gateway(log: Path) -> Iterator[str]:
    """``python -m gateway`` on a free port, stopped afterwards."""
    port = _free_port()
    env = {**os.environ, "TOKENPIPE_LOG_LEVEL": "warning"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the gateway exited with {proc.returncode}; see {log}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the gateway did not start; see {log}") from None
                    time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# --- the report -------------------------------------------------------------------------


def table(rows: list[dict[str, object]]) -> str:
    head = (
        f"{'scenario':15} {'status':>9} {'probes':>6} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'worst':>7} {'gap ms':>7} {'secs':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        statuses = ",".join(str(s) for s in r["statuses"])  # type: ignore[attr-defined]
        lines.append(
            f"{r['scenario']!s:15} {statuses:>9} {r['probes']:>6} {r['p50_ms']:>7.1f} "
            f"{r['p99_ms']:>7.1f} {r['max_ms']:>7.1f} {r['worst_ms']:>7.1f} "
            f"{r['stream_gap_max_ms']:>7.1f} {r['seconds']:>6.2f}"
        )
    lines.append(
        "p50/p99/max: GET /healthz at 20 Hz during the heavy request(s), median over runs; "
        "worst: of any run; gap: worst gap between chunks of a 50 tokens/s stream."
    )
    return "\n".join(lines)


async def bench(
    url: str, scenarios: list[str], repeat: int, folder: Path
) -> list[dict[str, object]]:
    rows = []
    for scenario in scenarios:
        runs = [await run_once(url, scenario, folder) for _ in range(repeat)]
        rows.append(median_of(runs))
        print(f"  {scenario}: max {[round(r.max_ms, 1) for r in runs]} ms", file=sys.stderr)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "send":
        send_main(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running gateway (default: start one)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario (default 3)")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, of {','.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="bench-fairness-") as tmp:
        folder = Path(tmp)
        with contextlib.ExitStack() as stack:
            url = args.url or stack.enter_context(started_gateway(folder / "gateway.log"))
            rows = asyncio.run(bench(url.rstrip("/"), scenarios, args.repeat, folder))
    print(table(rows))
    if args.json:
        args.json.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
