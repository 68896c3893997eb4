"""Several replicas behind a real nginx, sharing one real redis-server: compose.yaml's
topology on loopback.

nginx runs ``config/nginx-compose.conf`` with its one ``server tokenpipe:8080`` line
swapped for two gateway processes (a round-robin upstream). One replica is killed
with SIGKILL mid-stream, and what each client sees is checked:

* streams on the survivor are untouched: they end with ``[DONE]``, whole;
* a stream on the dead replica ends without ``[DONE]`` (nginx closes it). Resuming
  it through nginx (``GET /v1/chat/completions/{id}?stream=true`` with
  ``Last-Event-ID`` and ``X-Resume-Token``) reaches the survivor, which reads the
  reply log in Redis: it sends what the dead producer logged after the client's
  last event (possibly nothing), then, once the producer's lease has run out,
  one in-band ``reply_lost`` error, never ``[DONE]``: the reply cannot be
  finished, and the client knows within seconds, not never;
* new requests go to the survivor (``proxy_next_upstream error timeout``: a refused
  connection is retried on the next replica, ``max_fails=1`` keeps the dead one out);
* limits are one limit: the rpm is counted in Redis whichever replica admits;
  ``/v1/usage`` counts the replies that ended (a reply whose replica died is in no
  total: its reservation expires instead of settling).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support.gateway import ROOT, GatewayProcess
from tests.support.nginx_server import Nginx
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.sse_client import Captured, parse_stream

pytestmark = pytest.mark.nginx

KEY = "sk-scale-out-5b2d9e"
ADMIN = "sk-scale-admin-77aa01"
AUTH = {"Authorization": f"Bearer {KEY}"}
SERVER_LINE = "server tokenpipe:8080 max_fails=1 fail_timeout=5s;"


def render_compose_conf(port: int, replicas: list[int], logs: Path) -> str:
    """``config/nginx-compose.conf`` with loopback replicas, port and log directory."""
    text = (ROOT / "config" / "nginx-compose.conf").read_text()
    servers = "\n    ".join(
        SERVER_LINE.replace("tokenpipe:8080", f"127.0.0.1:{p}") for p in replicas
    )
    swaps = {
        SERVER_LINE: servers,
        "listen 80;": f"listen 127.0.0.1:{port};",
        "/var/log/nginx/": f"{logs}/",
    }
    for old, new in swaps.items():
        assert text.count(old) == 1, f"config/nginx-compose.conf no longer has {old!r} once"
        text = text.replace(old, new)
    return text


@dataclass
class Topology:
    url: str
    replicas: list[GatewayProcess]
    nginx: Nginx

    def finished_on(self, replica: GatewayProcess) -> list[dict[str, Any]]:
        """The ``stream_finished`` log events of one replica so far."""
        return replica.log_events("stream_finished")


@pytest.fixture
def scale_out(
    redis_server: RedisServer,
    gateway_process: Callable[..., GatewayProcess],
    tmp_path: Path,
) -> Iterator[Callable[..., Topology]]:
    """``start(rpm=...)``: two replicas with one key limited to ``rpm``, behind nginx."""
    started: list[Nginx] = []

    def start(rpm: int) -> Topology:
        config = tmp_path / "tokenpipe.yaml"
        settings = {
            "auth": {"keys": [{"name": "team", "key": KEY, "rpm": rpm}], "admin_key": ADMIN},
            "redis_url": redis_server.url,
        }
        config.write_text(orjson.dumps(settings).decode())
        replicas = [gateway_process("--config", str(config)) for _ in range(2)]
        port = free_port()
        prefix = tmp_path / "nginx"
        nginx = Nginx(prefix, render_compose_conf(port, [r.port for r in replicas], prefix))
        started.append(nginx)
        nginx.start(port)
        return Topology(f"http://127.0.0.1:{port}", replicas, nginx)

    yield start
    for nginx in started:
        nginx.stop()


def body(seed: int, **fake: Any) -> dict[str, Any]:
    return {
        "model": "fake",
        "messages": [{"role": "user", "content": "Tell me about lighthouses."}],
        "stream": True,
        "seed": seed,
        "stream_options": {"include_usage": True},
        "fake": {"jitter": 0, **fake},
    }


@dataclass
class Reading:
    """One stream read event by event through nginx, until it ends or is cut."""

    request_id: str
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""
    cut: str | None = None
    tokens_seen: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def captured(self) -> Captured:
        """The complete events received (a cut may leave half of one behind)."""
        whole = self.raw[: self.raw.rfind(b"\n\n") + 2] if b"\n\n" in self.raw else b""
        got = Captured(self.status, self.headers, whole)
        got.data, got.comments, got.ids, got.retries = parse_stream(whole)
        return got


async def read_stream(url: str, payload: dict[str, Any], reading: Reading) -> None:
    headers = {**AUTH, "X-Request-ID": reading.request_id}
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/v1/chat/completions", json=payload, headers=headers) as resp,
        ):
            reading.status, reading.headers = resp.status, dict(resp.headers)
            async for piece in resp.content.iter_any():
                reading.raw += piece
                if reading.raw.count(b'"content":"') >= 4:  # role chunk + 3 tokens
                    reading.tokens_seen.set()
    except aiohttp.ClientPayloadError as exc:
        reading.cut = type(exc).__name__
    finally:
        reading.tokens_seen.set()


async def post(url: str, payload: dict[str, Any]) -> Captured:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", json=payload, headers=AUTH) as resp,
    ):
        raw = await resp.read()
        got = Captured(resp.status, dict(resp.headers), raw)
        if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            got.data, got.comments, got.ids, got.retries = parse_stream(raw)
        return got


async def resume(url: str, reply_id: str, token: str, after: int) -> Captured:
    headers = {**AUTH, "X-Resume-Token": token, "Last-Event-ID": str(after)}
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{url}/v1/chat/completions/{reply_id}", params={"stream": "true"}, headers=headers
        ) as resp,
    ):
        raw = await resp.read()
        got = Captured(resp.status, dict(resp.headers), raw)
        if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            got.data, got.comments, got.ids, got.retries = parse_stream(raw)
        return got


async def usage(url: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/v1/usage", headers={"Authorization": f"Bearer {ADMIN}"}) as resp,
    ):
        assert resp.status == 200
        keys: dict[str, Any] = (await resp.json())["keys"]
        return keys


async def settled_usage(url: str, requests: int) -> dict[str, Any]:
    """``/v1/usage`` of the key once ``requests`` replies are settled (in the background)."""
    deadline = time.monotonic() + 10
    while True:
        team = (await usage(url)).get("team", {"requests": 0})
        if team["requests"] >= requests or time.monotonic() > deadline:
            return team  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)


def served_tokens(got: Captured) -> tuple[int, int]:
    """(prompt, completion) tokens from a stream's usage chunk."""
    last = got.chunks[-1]
    assert last["choices"] == [], last
    return last["usage"]["prompt_tokens"], last["usage"]["completion_tokens"]


@pytest.mark.slow
async def test_a_replica_killed_mid_stream(scale_out: Callable[..., Topology]) -> None:
    top = scale_out(rpm=100)
    doomed, survivor = top.replicas
    readings = [Reading(f"stream-{i}") for i in range(4)]
    # 60 tokens at 25/s: about 2.4 s each, so all four are mid-stream at the kill.
    tasks = [
        asyncio.create_task(
            read_stream(top.url, body(seed=i, tokens_per_second=25, reply_tokens=60), r)
        )
        for i, r in enumerate(readings)
    ]
    async with asyncio.timeout(20):
        for reading in readings:
            await reading.tokens_seen.wait()
    doomed.proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    async with asyncio.timeout(30):
        await asyncio.gather(*tasks)

    whole = [r for r in readings if r.captured.data[-1:] == ["[DONE]"]]
    cut = [r for r in readings if r not in whole]
    # Round robin: two streams on each replica.
    assert len(whole) == 2, [(r.request_id, r.cut, r.raw[-200:]) for r in readings]
    assert len(cut) == 2
    for reading in whole:
        got = reading.captured
        assert reading.cut is None
        assert not any('"error"' in d for d in got.data)
        assert served_tokens(got)[1] == 60
        assert sum(1 for c in got.chunks if c["choices"] and c["choices"][0]["finish_reason"]) == 1
    # The survivor served the whole ones; the cut ones were on the dead replica. Its
    # stream_finished lines follow the [DONE] it sent: wait for them a little.
    wanted = {r.request_id for r in whole}
    deadline = time.monotonic() + 5
    while True:
        on_survivor = {e["request_id"] for e in top.finished_on(survivor)}
        if wanted <= on_survivor or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert wanted <= on_survivor
    assert not {r.request_id for r in cut} & on_survivor
    for reading in cut:
        got = reading.captured
        assert reading.cut == "ClientPayloadError"  # nginx closed it: no terminal chunk
        assert "[DONE]" not in got.data
        assert 4 <= len(got.data) < 62

    # New requests: to the survivor, all served whole (the dead one refuses connections,
    # nginx passes the request on and then keeps the dead one out of the rotation).
    after_kill = [await post(top.url, body(seed=10 + i, reply_tokens=8)) for i in range(4)]
    for got in after_kill:
        assert got.status == 200, got.raw[:300]
        assert got.data[-1] == "[DONE]"
        assert served_tokens(got)[1] == 8

    # The cut streams, resumed through nginx: the survivor reads the dead producer's log.
    for reading in cut:
        before = reading.captured
        reply_id = before.chunks[0]["id"]
        token = reading.headers["X-Resume-Token"]
        last = before.ids[-1]
        assert last is not None
        started = time.monotonic()
        got = await resume(top.url, reply_id, token, last)
        print(
            f"{reading.request_id}: resumed after event {last}: {got.status},"
            f" {got.raw[-200:]!r}, {time.monotonic() - killed_at:.1f} s after the kill"
        )
        assert got.status == 200, (
            got.status,
            got.raw[:300],
            top.nginx.error_log()[-2000:],
            survivor.logs()[-2000:],
        )
        assert got.ids == list(range(last + 1, last + 1 + len(got.data)))
        assert "[DONE]" not in got.data
        error = orjson.loads(got.data[-1])
        assert error["error"]["code"] == "reply_lost", error
        assert [d for d in got.data if '"error"' in d] == [got.data[-1]]
        assert time.monotonic() - started < 10
        # What came before and after the cut is a prefix of the reply, nothing repeated.
        seed = int(reading.request_id.rsplit("-", 1)[1])
        expected = await post(top.url, body(seed=seed, reply_tokens=60))
        assert expected.data[-1] == "[DONE]"
        assert expected.text.startswith(before.text + got.text)
        after_kill.append(expected)

    # Usage: every reply that ended, once; the two cut ones are in no total.
    served = [r.captured for r in whole] + after_kill
    team = await settled_usage(top.url, requests=len(served))
    assert team["requests"] == len(served)
    assert team["completion_tokens"] == sum(served_tokens(g)[1] for g in served)
    assert team["prompt_tokens"] == sum(served_tokens(g)[0] for g in served)


async def test_limits_and_usage_are_shared_by_the_replicas(
    scale_out: Callable[..., Topology],
) -> None:
    rpm = 6
    top = scale_out(rpm=rpm)
    served = [await post(top.url, body(seed=i, reply_tokens=5)) for i in range(rpm)]
    for got in served:
        assert got.status == 200, got.raw[:300]
        assert got.data[-1] == "[DONE]"
    refused = await post(top.url, body(seed=99, reply_tokens=5))
    assert refused.status == 429
    assert orjson.loads(refused.raw)["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    # Round robin spread them, three on each replica: one limit, kept in Redis.
    async with asyncio.timeout(10):
        while sum(len(top.finished_on(r)) for r in top.replicas) < rpm:
            await asyncio.sleep(0.1)
    ended = [[e["reason"] for e in top.finished_on(r)] for r in top.replicas]
    assert ended == [["stop"] * 3, ["stop"] * 3], ended
    team = await settled_usage(top.url, requests=rpm)
    assert team["requests"] == rpm
    assert team["prompt_tokens"] == sum(served_tokens(g)[0] for g in served)
    assert team["completion_tokens"] == sum(served_tokens(g)[1] for g in served) == rpm * 5
