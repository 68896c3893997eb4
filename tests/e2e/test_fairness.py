"""One request cannot hold the event loop or the memory of the gateway process.

Findings: a max-size body froze every stream and /healthz for seconds; a 150-byte
request for a huge fake reply held the loop and retained ~110 MB.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
import psutil

from providers.fake.reply import MAX_REPLY_TOKENS
from tests.support.gateway import GatewayProcess

MAX_BODY = 8 * 1024 * 1024


def big_body() -> bytes:
    """A body just under the default 8 MiB limit: one long message."""
    head = b'{"model":"fake-fast","max_tokens":2,"messages":[{"role":"user","content":"'
    tail = b'"}]}'
    word = b"lorem ipsum dolor sit amet, "
    filler = (word * (MAX_BODY // len(word)))[: MAX_BODY - len(head) - len(tail) - 1024]
    return head + filler + tail


HEAVY_CLIENT = """
import asyncio, json, sys, aiohttp
url, folder = sys.argv[1], sys.argv[2]
async def send(session, name):
    data = open(f"{folder}/{name}", "rb").read()
    async with session.post(url + "/v1/chat/completions", data=data,
                            headers={"Content-Type": "application/json"}) as resp:
        await resp.read()
        return resp.status
async def main():
    async with aiohttp.ClientSession() as session:
        both = await asyncio.gather(send(session, "big.json"), send(session, "long.json"))
        print(json.dumps(both))
asyncio.run(main())
"""


async def probe(url: str, stop: asyncio.Event, gaps: list[float]) -> None:
    """GET /healthz at 20 Hz; record each answer's latency."""
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            start = time.perf_counter()
            async with session.get(f"{url}/healthz") as resp:
                await resp.read()
            gaps.append(time.perf_counter() - start)
            await asyncio.sleep(0.05)


async def test_max_size_request_and_max_length_reply_do_not_stall_the_loop(
    gateway_process: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    proc = gateway_process(env={"TOKENPIPE_LOG_LEVEL": "warning"})
    url = proc.url
    stop = asyncio.Event()
    latencies: list[float] = []
    prober = asyncio.create_task(probe(url, stop, latencies))
    await asyncio.sleep(0.3)
    body = big_body()
    long_reply = orjson.dumps(
        {
            "model": "fake-fast",
            "messages": [{"role": "user", "content": "go"}],
            "fake": {"reply_tokens": MAX_REPLY_TOKENS},
        }
    )
    # The heavy requests come from another process, so this process's loop (the
    # probe's) is not busy reading them: the latency measured is the gateway's.
    heavy = tmp_path / "heavy.py"
    heavy.write_text(HEAVY_CLIENT)
    (tmp_path / "big.json").write_bytes(body)
    (tmp_path / "long.json").write_bytes(long_reply)
    client = await asyncio.create_subprocess_exec(
        sys.executable, str(heavy), url, str(tmp_path), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await client.communicate()
    statuses = orjson.loads(out)
    await asyncio.sleep(0.2)
    stop.set()
    await prober
    assert statuses == [200, 200]
    worst = max(latencies)
    print(f"healthz probes: {len(latencies)}, max latency {worst * 1000:.1f} ms")
    assert worst < 0.25, worst


async def test_rss_stays_bounded_after_many_max_length_fake_replies(
    gateway_process: Callable[..., GatewayProcess],
) -> None:
    proc = gateway_process(env={"TOKENPIPE_LOG_LEVEL": "warning"})
    process = psutil.Process(proc.proc.pid)
    async with aiohttp.ClientSession() as session:

        async def one(seed: int) -> None:
            body = {
                "model": "fake-fast",
                "messages": [{"role": "user", "content": "go"}],
                "seed": seed,
                "max_tokens": 1,
                "fake": {"reply_tokens": MAX_REPLY_TOKENS},
            }
            async with session.post(f"{proc.url}/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                await resp.read()

        await one(0)
        before = process.memory_info().rss
        for seed in range(1, 21):
            await one(seed)
        # And whole max-length replies, streamed through.
        for seed in range(21, 23):
            body = {
                "model": "fake-fast",
                "messages": [{"role": "user", "content": "go"}],
                "seed": seed,
                "stream": True,
                "fake": {"reply_tokens": MAX_REPLY_TOKENS},
            }
            async with session.post(f"{proc.url}/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                await resp.read()
    growth = (process.memory_info().rss - before) / 1e6
    print(f"RSS growth after 22 max-length fake requests: {growth:.1f} MB")
    assert growth < 60, growth
