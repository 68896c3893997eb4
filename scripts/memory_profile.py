#!/usr/bin/env python3
"""Where the memory of an open stream goes: tracemalloc inside a gateway holding streams.

RSS per held stream (``scripts/bench_variants.py --only held``) says how much; this says
where. It starts the benchmark upstream and one server under test (tokenpipe with a
preset of ``bench_variants``, or the bare relay) with tracemalloc armed by a signal,
warms it, starts tracing, holds ``--streams`` slow streams open until each has a token,
and compares the two snapshots: Python memory per open stream, by the line that
allocated it (``--by lineno``) or by the deepest tokenpipe frame above it (``--by
owner``, the default: which of our calls the memory belongs to). ``--by heap`` traces
nothing and splits the RSS instead: glibc's heap (in use, and freed but kept) and
pymalloc's arenas (blocks in use, and free blocks kept in arenas that still hold
live ones): what fragmentation adds to the live objects.

    .venv/bin/python scripts/memory_profile.py --variant keys
    .venv/bin/python scripts/memory_profile.py --variant bare --by lineno --top 30
    .venv/bin/python scripts/memory_profile.py --variant keys --by heap
    .venv/bin/python scripts/memory_profile.py --variant keys --streams 300 --waiting 60

``--waiting`` profiles streams before their first token (the upstream holds it back):
what a stream holds only while it waits is freed at once under load, and left as
holes between the long-lived objects of the others.

tracemalloc slows the server several times, so the streams take a while to open; the
figures are allocations still alive, after a ``gc.collect()``, not RSS (which adds
allocator slack and memory no Python allocator handed out).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import os
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench
import bench_variants

OURS = (str(bench.ROOT / "gateway"), str(bench.ROOT / "providers"))


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def heap_figures() -> dict[str, int]:
    """RSS and where it is: glibc's heap (mallinfo2) and pymalloc's arenas."""
    figures = {
        "rss": int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE")
    }
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        figures |= {
            "glibc heap": info.arena + info.hblkhd,
            "glibc in use": info.uordblks + info.hblkhd,
            "glibc free": info.fordblks,
        }
    with tempfile.TemporaryFile() as stats:
        saved = os.dup(2)
        os.dup2(stats.fileno(), 2)  # sys._debugmallocstats writes to the C stderr
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        stats.seek(0)
        lines = stats.read().decode(errors="replace").splitlines()
    for line in lines:
        name, _, value = line.rpartition("=")
        name = name.strip().removeprefix("# ")
        if name in (
            "arenas allocated current",
            "bytes in allocated blocks",
            "bytes in available blocks",
        ):
            figures[f"pymalloc {name}"] = int(value.strip().replace(",", ""))
    figures["pymalloc arenas"] = figures.pop("pymalloc arenas allocated current", 0) << 20
    return figures


def serve_traced(snapshot_prefix: str, argv: list[str]) -> None:
    """In the server's process: SIGUSR1 starts tracing and writes a snapshot (or, with
    ``TOKENPIPE_PROFILE_HEAP`` set, the heap figures, untraced); then serve."""
    taken = 0
    heap = bool(os.environ.get("TOKENPIPE_PROFILE_HEAP"))

    def snapshot(*_: Any) -> None:
        nonlocal taken
        import gc

        gc.collect()
        taken += 1
        if heap:
            Path(f"{snapshot_prefix}.{taken}").write_bytes(orjson.dumps(heap_figures()))
            return
        if taken == 1:
            tracemalloc.start(30)
        tracemalloc.take_snapshot().dump(f"{snapshot_prefix}.{taken}")

    signal.signal(signal.SIGUSR1, snapshot)
    if argv[:1] == ["bare-relay"]:
        sys.argv = [str(Path(bench.__file__)), *argv]
        runpy.run_path(bench.__file__, run_name="__main__")
    else:
        from gateway.cli import main

        main(argv)


async def hold(
    url: str, model: str, pid: int, streams: int, settle: float, waiting: float | None = None
) -> None:
    target = bench.Target("under-test", url, model, False)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for _ in range(20):
            await bench.read_stream(session, target, target.body(5, 0.0))
        await asyncio.sleep(0.5)
        os.kill(pid, signal.SIGUSR1)  # tracing starts: the baseline
        await asyncio.sleep(3)
        # ``waiting``: no first token for an hour, snapshot after that many seconds.
        body = target.body(100_000, 3600.0 if waiting is not None else 1.0)
        firsts = [asyncio.Event() for _ in range(streams)]
        tasks = [
            asyncio.create_task(bench.read_stream(session, target, body, first)) for first in firsts
        ]
        try:
            if waiting is not None:
                await asyncio.sleep(waiting)
            else:
                async with asyncio.timeout(600):
                    for first in firsts:
                        await first.wait()
                await asyncio.sleep(settle)
            os.kill(pid, signal.SIGUSR1)  # every stream open
            await asyncio.sleep(max(6.0, streams / 150))  # the snapshot is written
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def report_heap(prefix: str, streams: int) -> None:
    before = orjson.loads(Path(f"{prefix}.1").read_bytes())
    after = orjson.loads(Path(f"{prefix}.2").read_bytes())
    print(f"{'':34} {'before':>12} {'held':>12}  KB per stream ({streams} open)")
    for name, value in after.items():
        was = before.get(name, 0)
        print(f"{name:34} {was:>12,} {value:>12,}  {(value - was) / 1024 / streams:8.2f}")


def report(prefix: str, streams: int, by: str, top: int) -> None:
    if by == "heap":
        report_heap(prefix, streams)
        return
    before = tracemalloc.Snapshot.load(f"{prefix}.1")
    after = tracemalloc.Snapshot.load(f"{prefix}.2")
    diff = after.compare_to(before, "traceback")
    total = sum(d.size_diff for d in diff)
    print(f"{total / 1024 / streams:.2f} KB of Python memory per open stream ({streams} open)")
    sizes: collections.Counter[str] = collections.Counter()
    blocks: collections.Counter[str] = collections.Counter()
    for d in diff:
        frames = list(d.traceback)  # oldest first
        if by == "owner":
            ours = [f for f in frames if f.filename.startswith(OURS)]
            where = ours[-1] if ours else frames[-1]
        else:
            where = frames[-1]
        key = f"{where.filename.removeprefix(str(bench.ROOT) + '/')}:{where.lineno}"
        sizes[key] += d.size_diff
        blocks[key] += d.count_diff
    print(f"{'bytes':>7} {'blocks':>6}  per stream, by {by}")
    for key, size in sizes.most_common(top):
        print(f"{size / streams:7.0f} {blocks[key] / streams:6.1f}  {key}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="keys", help="a bench_variants preset, or bare")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--by", choices=("owner", "lineno", "heap"), default="owner")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--waiting",
        type=float,
        metavar="SECONDS",
        help="profile streams still waiting for their first token, that long after opening",
    )
    parser.add_argument("--serve", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:  # the server's process
        serve_traced(args.serve[0], args.serve[1:])
        return
    extra = bench_variants.PRESETS[args.variant]
    env = {**os.environ, "TOKENPIPE_LOG_LEVEL": "warning"}
    if args.by == "heap":
        env["TOKENPIPE_PROFILE_HEAP"] = "1"
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        if extra is not None and "{redis}" in extra:
            extra = extra.replace("{redis}", stack.enter_context(bench_variants.redis_server(work)))
        up_port, port = bench.free_port(), bench.free_port()
        me = [sys.executable, str(Path(bench.__file__).resolve())]
        upstream = subprocess.Popen(
            [*me, "upstream", "--port", str(up_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stack.callback(upstream.wait)
        stack.callback(upstream.terminate)
        upstream_url = f"http://127.0.0.1:{up_port}/v1"
        if extra is None:
            serve = ["bare-relay", "--port", str(port), "--upstream", upstream_url]
            model = "bench"
        else:
            config = work / "gateway.yaml"
            config.write_text(
                "models:\n  - name: relay\n    provider: openai\n"
                f"    base_url: {upstream_url}\n    api_key: none\n" + extra
            )
            serve = ["--host", "127.0.0.1", "--port", str(port), "--config", str(config)]
            model = "relay"
        prefix = str(work / "snapshot")
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", prefix, *serve],
            cwd=bench.ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(work / "server.log").open("w"),
        )
        stack.callback(server.wait)
        stack.callback(server.terminate)
        deadline = time.monotonic() + 60
        while not listening(port) or not listening(up_port):
            if time.monotonic() > deadline or server.poll() is not None:
                sys.exit(f"the server did not start: {(work / 'server.log').read_text()}")
            time.sleep(0.2)
        asyncio.run(
            hold(
                f"http://127.0.0.1:{port}/v1",
                model,
                server.pid,
                args.streams,
                args.settle,
                args.waiting,
            )
        )
        report(prefix, args.streams, args.by, args.top)


if __name__ == "__main__":
    main()
