#!/usr/bin/env python3
"""Benchmark tokenpipe in front of a real model: TTFT and inter-token latency, direct vs relayed.

The upstream is llama-cpp-python's OpenAI-compatible server with SmolLM2-135M (from
``.venv-realmodel``, built by ``./scripts/realmodel-env``), started by this script
unless ``--upstream URL`` names a running OpenAI-compatible server. tokenpipe runs as
``python -m gateway`` with a config routing one model to it. Requests alternate,
direct then relayed, then relayed then direct, and so on (so drift and the llama
server's prompt cache treat both sides alike), one at a time, greedy (temperature 0,
a fixed seed): both sides generate the same tokens.

For each request it records the time to the first content token and every gap
between content tokens. The gateway's added latency is the difference of paired
requests (relayed minus the direct one next to it), reported with its spread,
against the spread of the direct requests alone.

    .venv/bin/python scripts/bench_realmodel.py                  # ~20 requests each, ~1 min
    .venv/bin/python scripts/bench_realmodel.py --requests 40 --max-tokens 64 --json out.json
    .venv/bin/python scripts/bench_realmodel.py --upstream http://127.0.0.1:8000/v1 --model m

It imports nothing of tokenpipe: it talks to it over HTTP, as a user would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("TOKENPIPE_REALMODEL_VENV", ROOT / ".venv-realmodel"))
#: The name the llama server answers to, and the route tokenpipe gets.
ALIAS = "smollm2"
ROUTE = "smol"
PROMPT = "Explain in a few sentences why streaming tokens matters for a chat interface."
GREEDY: dict[str, Any] = {"temperature": 0, "seed": 1234}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90.0) -> None:
    """Until ``GET url`` answers 200; the process's log in the error if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout:g} s:\n{log.read_text()}")


@contextlib.contextmanager
def process(args: list[str], ready_url: str, log: Path, env: dict[str, str]) -> Iterator[None]:
    """A child process, logging to ``log``, ready once ``ready_url`` answers."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_ready(ready_url, proc, log)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def llama_server(port: int, log: Path) -> contextlib.AbstractContextManager[None]:
    """The SmolLM2 llama server of ``.venv-realmodel``, one generation thread."""
    python = VENV / "bin" / "python"
    model_path = VENV / "model-path"
    if not python.exists() or not model_path.exists():
        sys.exit(f"no {VENV}: run ./scripts/realmodel-env first, or pass --upstream URL")
    args = [
        str(python),
        "-m",
        "llama_cpp.server",
        "--model",
        model_path.read_text().strip(),
        "--model_alias",
        ALIAS,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        # As the real-model tests run it on the shared 2-core machine.
        "--n_threads",
        "1",
        "--n_threads_batch",
        "2",
    ]
    return process(args, f"http://127.0.0.1:{port}/v1/models", log, dict(os.environ))


def gateway(
    port: int, upstream: str, model: str, workdir: Path
) -> contextlib.AbstractContextManager[None]:
    """``python -m gateway`` routing :data:`ROUTE` to ``upstream``."""
    config = workdir / "tokenpipe.yaml"
    route = {
        "name": ROUTE,
        "provider": "openai",
        "base_url": upstream,
        "upstream_model": model,
        "api_key": "unused",
        "retries": 0,
    }
    config.write_bytes(orjson.dumps({"models": [route]}))  # JSON is YAML
    args = [sys.executable, "-m", "gateway", "--config", str(config), "--port", str(port)]
    env = {**os.environ, "TOKENPIPE_LOG_LEVEL": "warning", "TOKENPIPE_LOG_FORMAT": "json"}
    return process(args, f"http://127.0.0.1:{port}/healthz", workdir / "gateway.log", env)


# --- measuring ----------------------------------------------------------------------


@dataclass
class Sample:
    """One streamed reply, timed from the request's send."""

    side: str
    ttft: float
    gaps: list[float] = field(default_factory=list)
    text: str = ""


async def one_reply(
    session: aiohttp.ClientSession, side: str, url: str, model: str, max_tokens: int
) -> Sample:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "max_tokens": max_tokens,
        **GREEDY,
    }
    pieces: list[str] = []
    stamps: list[float] = []
    started = time.perf_counter()
    async with session.post(f"{url}/chat/completions", json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"{side}: HTTP {response.status}: {await response.text()}")
        async for line in response.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = orjson.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"{side}: {chunk['error']}")
            for choice in chunk.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    stamps.append(time.perf_counter())
                    pieces.append(content)
    if not stamps:
        raise RuntimeError(f"{side}: no content")
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return Sample(side, stamps[0] - started, gaps, "".join(pieces))


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0.01 ... 0.99), interpolated between the two nearest values."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def spread(values: list[float]) -> dict[str, float]:
    """p10, p50 and p90, in ms."""
    return {f"p{int(q * 100)}": quantile(values, q) * 1000 for q in (0.1, 0.5, 0.9)}


async def measure(
    direct: str, relayed: str, upstream_model: str, requests: int, max_tokens: int, warmup: int
) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=120)
    load_before = os.getloadavg()[0]
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(warmup):
            await one_reply(session, "direct", direct, upstream_model, max_tokens)
            await one_reply(session, "relayed", relayed, ROUTE, max_tokens)
        pairs: list[tuple[Sample, Sample]] = []
        for i in range(requests):
            order = [("direct", direct, upstream_model), ("relayed", relayed, ROUTE)]
            if i % 2:
                order.reverse()
            got = {
                side: await one_reply(session, side, url, model, max_tokens)
                for side, url, model in order
            }
            pairs.append((got["direct"], got["relayed"]))
    texts = {s.text for pair in pairs for s in pair}
    # The machine's load matters: every relayed token needs one more process scheduled.
    load = {"before": load_before, "after": os.getloadavg()[0], "cpus": os.cpu_count()}
    result: dict[str, Any] = {
        "requests": requests,
        "max_tokens": max_tokens,
        "same_text": len(texts) == 1,
        "load_average_1m": load,
    }
    for index, side in enumerate(("direct", "relayed")):
        samples = [pair[index] for pair in pairs]
        gaps = [g for s in samples for g in s.gaps]
        result[side] = {
            "ttft_ms": spread([s.ttft for s in samples]),
            "itl_ms": spread(gaps),
            "tokens": statistics.mean(len(s.gaps) + 1 for s in samples),
        }
    added_ttft = [r.ttft - d.ttft for d, r in pairs]
    # Per pair, the median gap of each side: one number per reply, not per token.
    added_itl = [
        statistics.median(r.gaps) - statistics.median(d.gaps) for d, r in pairs if d.gaps and r.gaps
    ]
    result["added"] = {"ttft_ms": spread(added_ttft), "itl_ms": spread(added_itl)}
    # Noise: the same measurement between consecutive direct requests.
    direct_ttfts = [d.ttft for d, _ in pairs]
    noise = [b - a for a, b in itertools.pairwise(direct_ttfts)]
    result["noise"] = {"direct_ttft_ms": spread(noise)}
    return result


# --- reporting ----------------------------------------------------------------------


def report(result: dict[str, Any], markdown: bool) -> str:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |" if markdown else "  ".join(f"{c:>22}" for c in cells)

    lines = [row(["", "direct", "tokenpipe", "added (paired)"])]
    if markdown:
        lines.append("|---|---|---|---|")
    for metric, label in (("ttft_ms", "TTFT"), ("itl_ms", "inter-token")):
        for q in ("p50", "p90"):
            lines.append(
                row(
                    [
                        f"{label} {q}, ms",
                        f"{result['direct'][metric][q]:.2f}",
                        f"{result['relayed'][metric][q]:.2f}",
                        f"{result['added'][metric][q]:+.2f}" if q == "p50" else "",
                    ]
                )
            )
    added, noise = result["added"], result["noise"]["direct_ttft_ms"]
    load = result["load_average_1m"]
    lines += [
        "",
        f"{result['requests']} requests each, alternating, greedy, "
        f"{result['direct']['tokens']:.0f} tokens a reply; same text on both sides: "
        f"{'yes' if result['same_text'] else 'NO'}",
        f"load average (1 min) {load['before']:.1f} before, {load['after']:.1f} after, "
        f"on {load['cpus']} CPUs",
        "added TTFT, relayed minus its paired direct request: "
        f"p50 {added['ttft_ms']['p50']:+.2f} ms (p10 {added['ttft_ms']['p10']:+.2f}, "
        f"p90 {added['ttft_ms']['p90']:+.2f})",
        "added inter-token latency, per reply (median gap): "
        f"p50 {added['itl_ms']['p50']:+.3f} ms (p10 {added['itl_ms']['p10']:+.3f}, "
        f"p90 {added['itl_ms']['p90']:+.3f})",
        "noise, one direct request minus the previous direct one (TTFT): "
        f"p10 {noise['p10']:+.2f}, p50 {noise['p50']:+.2f}, p90 {noise['p90']:+.2f} ms",
    ]
    return "\n".join(lines)


def main() -> None:
    """Start the servers (unless given an upstream), measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", help="a running OpenAI-compatible base URL, ending in /v1")
    parser.add_argument("--model", default=ALIAS, help="the upstream's model name")
    parser.add_argument("--requests", type=int, default=20, help="measured requests per side")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured requests per side")
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="bench-realmodel-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        upstream = args.upstream
        if upstream is None:
            port = free_port()
            print(f"starting the llama server ({VENV.name}) ...", file=sys.stderr)
            stack.enter_context(llama_server(port, workdir / "llama.log"))
            upstream = f"http://127.0.0.1:{port}/v1"
        upstream = upstream.rstrip("/")
        gateway_port = free_port()
        stack.enter_context(gateway(gateway_port, upstream, args.model, workdir))
        relayed = f"http://127.0.0.1:{gateway_port}/v1"
        print(f"measuring {args.requests} requests each ...", file=sys.stderr)
        result = asyncio.run(
            measure(upstream, relayed, args.model, args.requests, args.max_tokens, args.warmup)
        )
    if args.json:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(report(result, args.markdown))


if __name__ == "__main__":
    main()
