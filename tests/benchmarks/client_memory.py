"""Resident memory per open upstream stream: aiohttp's client against providers.support.http1.

An upstream process answers every POST with one SSE chunk and then holds the stream
open. For each client, a fresh process opens ``--streams`` streams (each reads its
first chunk and waits, as a provider waits for the next token) and prints its RSS
growth per stream; the figure includes the socket's transport and the waiting task,
which both clients have.

    .venv/bin/python -m tests.benchmarks.client_memory --streams 1000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import statistics
import subprocess
import sys
from collections.abc import Awaitable, Callable

_CHUNK = b'data: {"choices":[{"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
_HEADERS = {
    "Authorization": "Bearer sk-benchmark-0123456789",
    "Content-Type": "application/json",
    "User-Agent": "AsyncOpenAI/Python 3.0",
    "Accept": "application/json",
    "X-Stainless-Lang": "python",
    "X-Stainless-Package-Version": "3.0.0",
}
_BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}'


async def _serve(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(_CHUNK), _CHUNK)
        )
        await reader.read()  # until the client closes

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    print("ready", flush=True)
    await server.serve_forever()


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def _aiohttp_opener(url: str) -> Callable[[], Awaitable[object]]:
    import aiohttp

    from providers.support.headers import request_headers

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100_000, limit_per_host=0),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    headers = request_headers(_HEADERS)

    async def open_one() -> object:
        response = await session.post(url, data=_BODY, headers=headers)
        await response.content.readany()
        return response

    return open_one


async def _http1_opener(url: str) -> Callable[[], Awaitable[object]]:
    from providers.support.http1 import HTTP1Client

    client = HTTP1Client(url, _HEADERS, connect_timeout=10)

    async def open_one() -> object:
        connection = await client.post(_BODY)
        await connection.read()
        return connection

    return open_one


async def _measure(kind: str, url: str, streams: int) -> float:
    opener = await (_aiohttp_opener if kind == "aiohttp" else _http1_opener)(url)
    forever = asyncio.Event()

    async def hold() -> None:
        opened = await opener()
        await forever.wait()
        del opened

    # Warm up: imports, the first connections, the allocator's first arenas.
    warm = [asyncio.create_task(hold()) for _ in range(20)]
    await asyncio.sleep(0.5)
    gc.collect()
    before = _rss_kb()
    held = []
    for i in range(streams):
        held.append(asyncio.create_task(hold()))
        if i % 50 == 0:
            await asyncio.sleep(0)
    await asyncio.sleep(2)
    gc.collect()
    after = _rss_kb()
    del warm, held
    return (after - before) / streams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(_serve(args.serve))
        return
    if args.client:
        url = f"http://127.0.0.1:{args.port}/v1/chat/completions"
        print(asyncio.run(_measure(args.client, url, args.streams)), flush=True)
        return
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * args.streams + 1024), hard))
    from tests.support.ports import free_port

    port = free_port()
    module = [sys.executable, "-m", "tests.benchmarks.client_memory"]
    upstream = subprocess.Popen([*module, "--serve", str(port)], stdout=subprocess.PIPE)
    try:
        assert upstream.stdout is not None
        upstream.stdout.readline()
        figures: dict[str, list[float]] = {"aiohttp": [], "http1": []}
        for _ in range(args.runs):
            for kind, runs in figures.items():  # alternated, so drift hits both
                out = subprocess.run(
                    [
                        *module,
                        "--client",
                        kind,
                        "--port",
                        str(port),
                        "--streams",
                        str(args.streams),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs.append(float(out.stdout.split()[-1]))
        print(f"RSS per open stream, {args.streams} streams, KB (median of {args.runs})")
        for kind, runs in figures.items():
            listed = " ".join(f"{r:.2f}" for r in runs)
            print(f"  {kind:8} {statistics.median(runs):6.2f}   runs: {listed}")
    finally:
        upstream.terminate()
        upstream.wait()


if __name__ == "__main__":
    main()
