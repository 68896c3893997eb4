"""Per-request cost of the OpenAI provider: time to its first event, against raw aiohttp.

(The provider sends on its own HTTP/1.1 client, providers/support/http1.py, with the
SDK's URL and headers: through the SDK's ``post()`` the first event took 2.2 ms here,
on an aiohttp session about 0.4 ms, now 0.32-0.36 ms against 0.34-0.45 ms for raw
aiohttp in the same runs, though the provider's connection is closed after each first
event (its stream is left early) and aiohttp's is reused.)

Both read the same fast fake upstream (tests/support/fakes/openai_upstream.py) in this process:
the provider through the openai SDK (``OpenAIProvider.stream`` until its first event),
and a bare ``aiohttp`` POST until the first streamed line. The difference is what the
SDK adds to every request's time to first token.

    .venv/bin/python -m tests.benchmarks.provider_ttft [--requests 300] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp

from config import UpstreamConfig
from providers.base import ChatRequest
from providers.openai.provider import OpenAIProvider
from tests.support.fakes.openai_upstream import Behaviour, FakeOpenAIUpstream

MESSAGES = [{"role": "user", "content": "hello"}]


async def main(requests: int, rounds: int) -> None:
    async with FakeOpenAIUpstream(Behaviour(tokens=5)) as fake:
        provider = OpenAIProvider(UpstreamConfig(base_url=fake.base_url, api_key=None))
        request = ChatRequest(model="m", messages=MESSAGES)
        body = {"model": "m", "messages": MESSAGES, "stream": True}
        async with aiohttp.ClientSession() as session:

            async def via_provider() -> float:
                started = time.perf_counter()
                events = provider.stream(request)
                await anext(events)
                elapsed = time.perf_counter() - started
                await events.aclose()  # type: ignore[attr-defined]
                return elapsed

            async def via_aiohttp() -> float:
                started = time.perf_counter()
                async with session.post(f"{fake.base_url}/chat/completions", json=body) as resp:
                    await resp.content.readline()
                    elapsed = time.perf_counter() - started
                    await resp.read()
                return elapsed

            for warm in (via_provider, via_aiohttp):
                for _ in range(50):
                    await warm()
            for _ in range(rounds):
                sdk = [await via_provider() for _ in range(requests)]
                raw = [await via_aiohttp() for _ in range(requests)]
                fake.requests.clear()
                print(
                    f"first event p50: provider {statistics.median(sdk) * 1000:.3f} ms"
                    f", raw aiohttp {statistics.median(raw) * 1000:.3f} ms"
                )
        await provider.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(args.requests, args.rounds))
    else:
        uvloop.run(main(args.requests, args.rounds))
