"""Measure the client-side CPU cost of reading an OpenAI-style token stream, per 1,000 tokens.

A fake OpenAI upstream (``tests.support.fakes.openai_upstream``) runs in a subprocess, so the
CPU time measured here (``time.process_time``) is the reading side's alone. One long
stream is consumed, several times, by each of:

* ``sdk``      the openai SDK's typed chunks (``async for chunk in await create(stream=True)``)
* ``provider`` ``OpenAIProvider.stream``: SDK for the request, raw bytes + orjson per event
* ``aiohttp``  a bare aiohttp client iterating body lines, orjson per ``data:`` line
* ``aiohttp+sse`` aiohttp reading chunks into ``providers.support.upstream_sse.SSEParser``

With ``--delay 0`` the upstream writes as fast as it can, so one read often carries
several events; ``--delay`` > 0 paces tokens so that each read carries about one event,
as with a real model.

    .venv/bin/python -m tests.benchmarks.relay_cost --tokens 20000 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
from openai.types.chat import ChatCompletionMessageParam

from config.models import UpstreamConfig
from providers.base import ChatRequest
from providers.events import TextDelta
from providers.openai.provider import OpenAIProvider
from providers.support.upstream_sse import SSEParser

ROOT = Path(__file__).resolve().parent.parent.parent

MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "Write a very long story."}]
SDK_MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": MESSAGES[0]["content"]}
]
Reader = Callable[[str], Awaitable[int]]


async def read_sdk(base_url: str) -> int:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    tokens = 0
    try:
        stream = await client.chat.completions.create(
            model="bench",
            messages=SDK_MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                tokens += 1
    finally:
        await client.close()
    return tokens


async def read_provider(base_url: str) -> int:
    provider = OpenAIProvider(UpstreamConfig(base_url=base_url))
    tokens = 0
    try:
        async for event in provider.stream(ChatRequest(model="bench", messages=MESSAGES)):
            if isinstance(event, TextDelta):
                tokens += 1
    finally:
        await provider.aclose()
    return tokens


def _body() -> dict[str, object]:
    return {"model": "bench", "messages": MESSAGES, "stream": True}


async def read_aiohttp_lines(base_url: str) -> int:
    tokens = 0
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url}/chat/completions", json=_body()) as response,
    ):
        async for line in response.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            choices = orjson.loads(line[6:]).get("choices")
            if choices and choices[0]["delta"].get("content"):
                tokens += 1
    return tokens


async def read_aiohttp_sse(base_url: str) -> int:
    tokens = 0
    parser = SSEParser()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url}/chat/completions", json=_body()) as response,
    ):
        async for chunk in response.content.iter_any():
            for event in parser.feed(chunk):
                if event.data == b"[DONE]":
                    continue
                choices = orjson.loads(event.data).get("choices")
                if choices and choices[0]["delta"].get("content"):
                    tokens += 1
    return tokens


READERS: dict[str, Reader] = {
    "sdk": read_sdk,
    "provider": read_provider,
    "aiohttp": read_aiohttp_lines,
    "aiohttp+sse": read_aiohttp_sse,
}


async def measure(base_url: str, runs: int, expected: int) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in READERS}
    for reader in READERS.values():  # warm-up: lazy imports and first-use caches
        await reader(base_url)
    for _ in range(runs):
        for name, reader in READERS.items():  # interleaved, so drift hits all alike
            cpu, wall = time.process_time(), time.perf_counter()
            tokens = await reader(base_url)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            if tokens != expected:
                raise RuntimeError(f"{name}: read {tokens} tokens, expected {expected}")
            results[name].append((cpu, wall))
    return results


def start_fake(tokens: int, delay: float) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "tests.support.fakes.openai_upstream", "--port", "0"]
    command += ["--tokens", str(tokens), "--delay", str(delay)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    base_url = proc.stdout.readline().strip()
    if not base_url.startswith("http"):
        proc.kill()
        raise RuntimeError("the fake upstream did not start")
    return proc, base_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--uvloop", action="store_true", help="run the readers on uvloop")
    args = parser.parse_args()
    proc, base_url = start_fake(args.tokens, args.delay)
    try:
        runner = asyncio.run
        if args.uvloop:
            import uvloop

            runner = uvloop.run
        results = runner(measure(base_url, args.runs, args.tokens))
    finally:
        proc.terminate()
        proc.wait(10)
    loop = "uvloop" if args.uvloop else "asyncio"
    print(f"{args.tokens} tokens/stream, delay {args.delay}s, {args.runs} runs, {loop}, medians")
    print(f"{'reader':<13} {'CPU ms/1k tok':>14} {'wall ms/1k tok':>15} {'vs provider':>12}")
    base = statistics.median(cpu for cpu, _ in results["provider"])
    for name, samples in results.items():
        cpu = statistics.median(c for c, _ in samples)
        wall = statistics.median(w for _, w in samples)
        per_k = 1000.0 / args.tokens * 1000.0
        print(f"{name:<13} {cpu * per_k:>14.2f} {wall * per_k:>15.2f} {cpu / base:>11.2f}x")


if __name__ == "__main__":
    main()
