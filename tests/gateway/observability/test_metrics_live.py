"""``/metrics`` of a live gateway after a known mix of requests, parsed for real."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import GatewayProcess, MakeGateway


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= ls)


async def scrape(url: str) -> dict[Any, float]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return samples(await r.text())


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> int:
    async with session.post(f"{url}/v1/chat/completions", json=body) as r:
        await r.read()
        return r.status


def chat(model: str = "fake-fast", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_a_known_mix_counts_exactly(make_gateway: MakeGateway) -> None:
    models = [
        {
            "name": "flaky",
            "provider": "fake",
            "retries": 0,
            "fallbacks": ["fake-fast"],
            "options": {"fail_after": 0, "error": "upstream_error"},
        },
        {
            "name": "stuck",
            "provider": "fake",
            "retries": 0,
            "timeouts": {"idle": 0.2},
            "options": {"stall_after": 2},
        },
    ]
    url = await make_gateway(models=models)
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            assert await post(session, url, chat(max_tokens=5, stream=True)) == 200
        for i in range(2):
            assert await post(session, url, chat(f"no-such-model-{i}")) == 404
        assert await post(session, url, chat("flaky", max_tokens=4)) == 200
        assert await post(session, url, chat("stuck", stream=True)) == 200
        # One stream the client leaves.
        response = await session.post(
            f"{url}/v1/chat/completions",
            json=chat("fake", stream=True, fake={"ttft_ms": 0, "tokens_per_second": 20}),
        )
        await response.content.readline()
        response.close()
        await asyncio.sleep(0.3)
    found = await scrape(url)
    ends = "tokenpipe_stream_ends_total"
    assert value(found, ends, reason="length") == 4  # 3 streams + the fallback's reply
    assert value(found, ends, reason="timeout") == 1
    assert value(found, ends, reason="client_gone") == 1
    requests = "tokenpipe_requests_total"
    assert value(found, requests, endpoint="/v1/chat/completions", status="200") == 5
    assert value(found, requests, endpoint="/v1/chat/completions", status="499") == 1
    assert value(found, requests, endpoint="other", status="404") == 0
    assert value(found, requests, endpoint="/v1/chat/completions", status="404") == 2
    attempts = "tokenpipe_upstream_attempts_total"
    assert value(found, attempts, route="flaky", outcome="fallback") == 1
    assert value(found, attempts, route="fake-fast", outcome="ok") == 4
    assert value(found, "gen_ai_server_time_to_first_token_seconds_count") == 6
    assert value(found, "tokenpipe_tokens_total", gen_ai_token_type="output") == 3 * 5 + 4 + 2 + (
        value(
            found, "tokenpipe_tokens_total", gen_ai_token_type="output", gen_ai_request_model="fake"
        )
    )
    assert value(found, "tokenpipe_streams_in_flight") == 0
    # Unknown model names add no series.
    names = {dict(ls).get("gen_ai_request_model") for (_, ls) in found}
    assert not any(n and n.startswith("no-such-model") for n in names)


async def test_two_workers_one_scrape_sums_them(gateway_process: Any) -> None:
    proc: GatewayProcess = gateway_process("--workers", "2")
    pids: set[int] = set()
    async with aiohttp.ClientSession() as session:
        for _ in range(40):
            # A new connection each time, so the kernel spreads them over both workers.
            async with aiohttp.ClientSession() as fresh:
                assert await post(fresh, proc.url, chat(max_tokens=2)) == 200
                async with fresh.get(f"{proc.url}/healthz") as r:
                    pids.add((await r.json())["pid"])
            if len(pids) == 2 and _ >= 10:
                break
        assert len(pids) == 2, "the kernel sent every connection to one worker"
        total = _ + 1
        for _ in range(3):  # any worker answers the scrape, always with the sum
            async with session.get(f"{proc.url}/metrics") as r:
                found = samples(await r.text())
            assert value(found, "tokenpipe_stream_ends_total", reason="length") == total


async def first_stats(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/dashboard/events") as r:
        frame = await r.content.readuntil(b"\n\n")
    data = next(line for line in frame.split(b"\n") if line.startswith(b"data: "))
    stats: dict[str, Any] = orjson.loads(data[len(b"data: ") :])
    return stats


async def test_metrics_off_observes_nothing(make_gateway: MakeGateway) -> None:
    url = await make_gateway(metrics=False)
    async with aiohttp.ClientSession() as session:
        assert await post(session, url, chat(max_tokens=5, stream=True)) == 200
        assert await post(session, url, chat(max_tokens=5)) == 200
        assert await post(session, url, chat("no-such-model")) == 404
        found = await scrape(url)
        stats = await first_stats(session, url)
    for name in (
        "tokenpipe_requests_total",
        "tokenpipe_stream_ends_total",
        "tokenpipe_tokens_total",
        "tokenpipe_upstream_attempts_total",
        "gen_ai_server_time_to_first_token_seconds_count",
    ):
        assert value(found, name) == 0, name
    assert value(found, "tokenpipe_streams_in_flight") == 0
    assert stats["in_flight"] == 0
    assert stats["replies_60s"] == 0
    assert stats["requests_per_s_60s"] == 0
