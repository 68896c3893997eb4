#!/usr/bin/env python3
"""What each feature costs: tokenpipe configurations measured against each other, interleaved.

The machine this runs on is shared and noisy: two runs of the same code a minute apart
differ by more than most features cost. So every configuration (a *variant*) runs as
its own gateway process at once, all pinned to one core, the upstream and the load to
the other (as in ``scripts/bench.py``, whose upstream, bare relay and load generator
this reuses), and the measurements interleave them:

* ``ttft``   sequential 5-token streamed requests, one to each variant in turn (the
             order rotates every round), ``--ttft`` rounds: p50 per variant, and what
             it adds over the direct upstream;
* ``paced``  200 streams at 50 tokens/s each for ``--paced-seconds``, each variant in
             turn, ``--rounds`` rounds: CPU ms per 1,000 tokens of the variant's process
             (median of rounds), and its ratio to the first variant's in the same round;
* ``flat``   64 streams flat out (2,000 tokens each), each variant in turn, ``--rounds``
             rounds: CPU ms per 1,000 tokens and the ratio to the first variant's;
* ``paired`` the ``paced`` load, but the first variant and one other at the same time
             (each its own 200 streams, both processes on the one core), each other
             variant in turn, ``--rounds`` rounds: the ratio of their CPU per token in
             the same seconds. The shared machine's noise (neighbours' load, cache and
             frequency swings, which move ``paced`` rounds by 10-30 %) then falls on
             both processes alike and cancels in the ratio; the price is that the two
             share the core, so each is measured at about 0.8 of a core's load rather
             than alone;
* ``held``   ``--held`` slow streams held open, once per variant: RSS per open stream.

Where redis-server runs (``--redis-core``): in a deployment Redis has a host of its
own, and its scripts' CPU (about 65-100 us per admission, as much per settle batch)
delays neither the upstream nor the gateway. Here it shares a core with one of them,
so by default it is kept off the path of what is measured: on the gateways' core for
``ttft`` (it runs while a gateway waits on its upstream, instead of taking the core
the fake upstream makes its first token on), on the upstream's for the loads (where
it would take CPU, and cache, from the gateways whose CPU is measured).

Variants (``--variants``, comma-separated; the first is the reference for ratios;
``NAME@DIR`` runs the preset from another checkout, e.g. the code before a change):

* ``bare``         the bare aiohttp relay (the floor for any relay)
* ``plain``        tokenpipe with ``metrics: false`` and ``resumable: false``
* ``default``      tokenpipe as configured out of the box (ids and the in-memory reply log,
                   metrics, access log, Host/CORS checks), no keys
* ``no-metrics``   default with ``metrics: false``
* ``no-resume``    default with ``resumable: false``
* ``keys``         default plus one API key with every limit (in-process store): every
                   feature of this turn on
* ``keys-redis``   ``keys`` with ``redis_url`` (a redis-server started here): limits and the
                   reply log in Redis
* ``redis``        default with ``redis_url``: no keys, so only the reply log in Redis
* ``short-ttl``    default with ``resume_ttl_seconds: 1``: ended replies' logs go at once
* ``keys-plain`` / ``keys-redis-plain``   ``keys`` / ``keys-redis`` with ``resumable: false``:
                   the limits alone, in process or in Redis
* ``keys-open``    ``keys`` with ``open_on_accept: true``: the stream opens when the
                   upstream accepts, before its first token

    .venv/bin/python scripts/bench_variants.py --variants bare,default,keys
    .venv/bin/python scripts/bench_variants.py --variants default,no-metrics --only paced
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench
import loadtest

KEY = """
auth:
  keys:
    - name: bench
      key: none
      rpm: 100000000
      tpm: 100000000000
      max_streams: 100000
      budget_tokens: 1000000000000
"""
PRESETS: dict[str, str | None] = {
    "bare": None,
    "plain": "metrics: false\nresumable: false\n",
    "default": "",
    "no-metrics": "metrics: false\n",
    "no-resume": "resumable: false\n",
    "keys": KEY,
    "keys-redis": KEY + "redis_url: {redis}\n",
    "redis": "redis_url: {redis}\n",
    "short-ttl": "resume_ttl_seconds: 1\n",
    "keys-plain": KEY + "resumable: false\n",
    "keys-redis-plain": KEY + "redis_url: {redis}\nresumable: false\n",
    "keys-open": KEY + "open_on_accept: true\n",
}
MEASURES = ("ttft", "paced", "flat", "paired", "held")


def _preset(variant: str) -> str:
    return variant.partition("@")[0]


def _checkout(variant: str) -> Path:
    where = variant.partition("@")[2]
    return Path(where).resolve() if where else bench.ROOT


def _variants(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if _preset(n) not in PRESETS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variant(s): {', '.join(unknown)}")
    return names


@contextlib.contextmanager
def redis_server(workdir: Path) -> Any:
    """A throwaway redis-server on a free port (no persistence), when one is installed:
    its URL and process (``place`` moves it from core to core)."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = bench.free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                bench.socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        proc.terminate()
        proc.wait(10)


async def ttft_round_robin(
    targets: dict[str, bench.Target],
    servers: dict[str, bench.Server],
    rounds: int,
    block: int = 1,
    fresh: bool = False,
    delay: float = 0.0,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """TTFT in ms of ``rounds`` short streams to each target, ``block`` back to back to
    one target before the next target's turn; and the CPU ms per request each target's
    process spent on them. Back to back: a reply's own wrap-up after its ``[DONE]`` may
    delay the next request. ``block=1`` asks each target in turn, so each request finds
    its process's caches cooled by the others on its core; a large ``block`` is the
    proxy alone on its core, asked one request after another. ``fresh``: every request
    on a new connection (as a client without a connection pool), its connect timed.
    ``delay``: the upstream sends its role chunk at once and each token after that
    many seconds, as a model does (the first token then finds each process idle)."""
    got: dict[str, list[float]] = {name: [] for name in targets}
    names = list(targets)
    bodies = {name: t.body(5, delay) for name, t in targets.items()}
    connector = aiohttp.TCPConnector(limit=0, force_close=fresh)
    async with aiohttp.ClientSession(connector=connector) as session:
        for name in names:  # warm: connections, caches
            for _ in range(5):
                await bench.read_stream(session, targets[name], bodies[name])
        # Each process's whole CPU over the phase: a reply's wrap-up after its [DONE]
        # (which may run while another target is asked) is counted too.
        cpu = {name: servers[name].cpu_seconds() for name in names}
        turns = max(1, rounds // block)
        for i in range(turns):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                for _ in range(block):
                    result = await bench.read_stream(session, targets[name], bodies[name])
                    if result.ttft is not None and result.done:
                        got[name].append(result.ttft * 1000)
    await asyncio.sleep(0.2)  # the last wrap-up
    spent = {name: servers[name].cpu_seconds() - cpu[name] for name in names}
    return got, {name: seconds * 1000 / (turns * block) for name, seconds in spent.items()}


async def load(
    target: bench.Target, server: bench.Server, streams: int, tokens: int, delay: float
) -> float:
    """CPU ms per 1,000 tokens of ``streams`` streams of ``tokens`` at ``delay`` s each."""
    (cpu,) = await load_at_once([(target, server)], streams, tokens, delay)
    return cpu


async def load_at_once(
    pair: list[tuple[bench.Target, bench.Server]], streams: int, tokens: int, delay: float
) -> list[float]:
    """:func:`load` on each target, all at the same time (the ``paired`` measure)."""
    benches = [bench.Bench(target, server, []) for target, server in pair]
    try:
        for b in benches:
            await b.warm(20)
        runs = await asyncio.gather(*(b.run(streams, tokens, delay) for b in benches))
        for (target, _), run in zip(pair, runs, strict=True):
            bench._check(run, f"{target.name} {streams}x{tokens}")
        return [run.cpu_ms_per_1k() for run in runs]
    finally:
        for b in benches:
            await b.close()


async def held(target: bench.Target, server: bench.Server, streams: int) -> dict[str, float]:
    b = bench.Bench(target, server, [])
    try:
        return await b.held(streams, 2.0)
    finally:
        await b.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=_variants, default=_variants("bare,default,keys"))
    parser.add_argument("--only", default=",".join(MEASURES), help="ttft,paced,flat,paired,held")
    parser.add_argument("--ttft", type=int, default=300, help="rounds of the TTFT measure")
    parser.add_argument(
        "--ttft-block",
        type=loadtest._positive_int,
        default=1,
        help="TTFT requests sent back to back to one target before the next one's turn"
        " (1: each in turn; 50: each proxy alone on its core, as a single-proxy benchmark)",
    )
    parser.add_argument(
        "--ttft-fresh",
        action="store_true",
        help="each TTFT request on a new connection (its connect included), not a kept-alive one",
    )
    parser.add_argument(
        "--ttft-delay",
        type=float,
        default=0.0,
        help="seconds before each token of a TTFT request's reply, the first one too (0:"
        " the whole reply at once, from a fast upstream)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of the paced, flat and paired measures"
    )
    parser.add_argument("--paced-seconds", type=float, default=6.0)
    parser.add_argument(
        "--redis-core",
        choices=("auto", "gateway", "upstream"),
        default="auto",
        help="the core redis-server runs on: the gateways' (it runs while a gateway waits on"
        " its upstream), the upstream's and the load's (its scripts' CPU then delays the"
        " fake upstream's first token), or auto (default): the gateways' for ttft, the"
        " upstream's for the loads, where each gateway's own CPU is measured",
    )
    parser.add_argument("--held", type=int, default=1000, help="streams held open")
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    measures = [m for m in args.only.split(",") if m]
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="tokenpipe-variants-") as tmp:
        results = run(args, measures, Path(tmp))
    payload = {
        "command": " ".join(["python", "scripts/bench_variants.py", *sys.argv[1:]]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "results": results,
    }
    print()
    print(report(results, args.variants))
    if args.json:
        args.json.write_text(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())


def run(args: argparse.Namespace, measures: list[str], workdir: Path) -> dict[str, Any]:
    gen_core, test_core = bench._cores()
    if gen_core is not None:
        os.sched_setaffinity(0, gen_core)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
    env = {**os.environ, "TOKENPIPE_LOG_LEVEL": "warning", "PYTHONUNBUFFERED": "1"}
    me = [sys.executable, str(Path(bench.__file__).resolve())]
    servers: dict[str, bench.Server] = {}
    with contextlib.ExitStack() as stack:
        port = bench.free_port()
        upstream = bench.start_server(
            "direct",
            [*me, "upstream", "--port", str(port)],
            port,
            gen_core,
            workdir / "upstream.log",
            env,
        )
        stack.callback(upstream.stop)
        redis, redis_proc = "", None
        if any("{redis}" in (PRESETS[_preset(v)] or "") for v in args.variants):
            redis, redis_proc = stack.enter_context(redis_server(workdir))
        for index, name in enumerate(args.variants):
            port = bench.free_port()
            extra = PRESETS[_preset(name)]
            if extra is None:
                command = [*me, "bare-relay", "--port", str(port), "--upstream", upstream.base_url]
            else:
                config = workdir / f"variant{index}.yaml"
                config.write_text(
                    "models:\n  - name: relay\n    provider: openai\n"
                    f"    base_url: {upstream.base_url}\n    api_key: none\n"
                    + extra.replace("{redis}", redis)
                )
                command = [sys.executable, "-m", "gateway", "--host", "127.0.0.1"]
                command += ["--port", str(port), "--config", str(config)]
            log = workdir / f"variant{index}.log"
            server = bench.start_server(
                name, command, port, test_core, log, env, cwd=_checkout(name)
            )
            stack.callback(server.stop)
            servers[name] = server
        targets = {
            name: bench.Target(
                name, s.base_url, "bench" if PRESETS[_preset(name)] is None else "relay", False
            )
            for name, s in servers.items()
        }
        results: dict[str, Any] = {name: {} for name in servers}

        def place(measure: str) -> None:
            """redis-server off the path of what ``measure`` measures (see --redis-core)."""
            if redis_proc is None or gen_core is None or test_core is None:
                return
            where = args.redis_core
            if where == "auto":
                where = "gateway" if measure == "ttft" else "upstream"
            os.sched_setaffinity(redis_proc.pid, test_core if where == "gateway" else gen_core)

        if "ttft" in measures:
            place("ttft")
            print(
                f"ttft: {args.ttft} rounds in blocks of {args.ttft_block}"
                f" over direct + {', '.join(servers)}"
            )
            direct = bench.Target("direct", upstream.base_url, "bench", False)
            got, cpu = asyncio.run(
                ttft_round_robin(
                    {"direct": direct, **targets},
                    {"direct": upstream, **servers},
                    args.ttft,
                    args.ttft_block,
                    args.ttft_fresh,
                    args.ttft_delay,
                )
            )
            direct_p50 = statistics.median(got.pop("direct"))
            results["direct"] = {"ttft_p50_ms": direct_p50, "cpu_ms_per_request": cpu["direct"]}
            for name, values in got.items():
                p50 = statistics.median(values)
                results[name]["ttft_p50_ms"] = p50
                results[name]["ttft_added_ms"] = p50 - direct_p50
                results[name]["cpu_ms_per_request"] = cpu[name]
                print(
                    f"  {name:12s} p50 {p50:.3f} ms (+{p50 - direct_p50:.3f}), "
                    f"CPU {cpu[name]:.3f} ms per request"
                )
        loads = {
            "paced": (200, int(args.paced_seconds / bench.PACE), bench.PACE),
            "flat": (64, 2000, 0.0),
        }
        for measure, (streams, tokens, delay) in loads.items():
            if measure not in measures:
                continue
            place(measure)
            rounds: list[dict[str, float]] = []
            names = list(servers)
            for i in range(args.rounds):
                shift = i % len(names)
                this: dict[str, float] = {}
                for name in names[shift:] + names[:shift]:
                    this[name] = asyncio.run(
                        load(targets[name], servers[name], streams, tokens, delay)
                    )
                    print(f"  {measure} round {i + 1} {name:12s} {this[name]:.1f} CPU ms/1k tokens")
                rounds.append(this)
            ref = names[0]
            for name in names:
                values = [r[name] for r in rounds]
                results[name][f"{measure}_cpu_ms_per_1k"] = statistics.median(values)
                results[name][f"{measure}_rounds"] = values
                results[name][f"{measure}_ratio_to_{ref}"] = statistics.median(
                    r[name] / r[ref] for r in rounds
                )
        if "paired" in measures:
            place("paired")
            names = list(servers)
            ref, others = names[0], names[1:]
            tokens = int(args.paced_seconds / bench.PACE)
            ratios: dict[str, list[float]] = {name: [] for name in others}
            for i in range(args.rounds):
                for name in others:
                    # Which load starts first alternates with the round.
                    order = [ref, name] if i % 2 == 0 else [name, ref]
                    pair_cpu = asyncio.run(
                        load_at_once(
                            [(targets[n], servers[n]) for n in order], 200, tokens, bench.PACE
                        )
                    )
                    both = dict(zip(order, pair_cpu, strict=True))
                    ratios[name].append(both[name] / both[ref])
                    print(
                        f"  paired round {i + 1} {ref} {both[ref]:.1f}, {name} {both[name]:.1f}"
                        f" CPU ms/1k tokens: {both[name] / both[ref]:.3f}"
                    )
            results[ref][f"paired_ratio_to_{ref}"] = 1.0
            for name, values in ratios.items():
                results[name][f"paired_ratio_to_{ref}"] = statistics.median(values)
                results[name]["paired_ratios"] = values
        if "held" in measures:
            place("held")
            for name in servers:
                results[name]["held"] = asyncio.run(held(targets[name], servers[name], args.held))
                print(f"  held {name:12s} {results[name]['held']['kb_per_stream']:.1f} KB/stream")
    return results


def report(results: dict[str, Any], variants: list[str]) -> str:
    ref = variants[0]
    rows = [
        ("TTFT p50, ms", "ttft_p50_ms", ".3f"),
        ("TTFT added vs direct, ms", "ttft_added_ms", ".3f"),
        ("CPU ms per 5-token request", "cpu_ms_per_request", ".3f"),
        ("200x50 CPU ms per 1k tokens (median of rounds)", "paced_cpu_ms_per_1k", ".1f"),
        (f"200x50 CPU per token vs {ref} (median of round ratios)", f"paced_ratio_to_{ref}", ".3f"),
        (
            f"200x50 CPU per token vs {ref}, paired in the same seconds (median)",
            f"paired_ratio_to_{ref}",
            ".3f",
        ),
        ("64 flat out CPU ms per 1k tokens", "flat_cpu_ms_per_1k", ".1f"),
        (f"64 flat out CPU per token vs {ref}", f"flat_ratio_to_{ref}", ".3f"),
    ]
    lines = ["| | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    for label, key, spec in rows:
        cells = [results[v].get(key) for v in variants]
        if all(c is None for c in cells):
            continue
        lines.append(
            f"| {label} | "
            + " | ".join("-" if c is None else format(c, spec) for c in cells)
            + " |"
        )
    helds = [results[v].get("held") for v in variants]
    if any(helds):
        lines.append(
            f"| KB RSS per held stream ({next(h for h in helds if h)['streams']} open) | "
            + " | ".join("-" if not h else f"{h['kb_per_stream']:.1f}" for h in helds)
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
