"""A fake OpenAI-compatible upstream: a real aiohttp server speaking the real wire format.

Use it as an async context manager (or ``start()`` / ``stop()``)::

    async with FakeOpenAIUpstream([Behaviour(tokens=3), Behaviour(status=503)]) as fake:
        client = AsyncOpenAI(base_url=fake.base_url, api_key="k")
        ...
    fake.requests[0].json  # what the client sent

``script`` is consumed one :class:`Behaviour` per chat request; the last one repeats.
The tokenize endpoints of local servers (llama-cpp-python's
``/extras/tokenize[/count]``, llama.cpp's and vLLM's ``/tokenize``) count with a toy
tokenizer, :func:`fake_token_count`, as :attr:`FakeOpenAIUpstream.tokenize` says; they
are logged in ``tokenize_requests``, apart from the chat requests.
A request body may also carry ``"x_fake": {...}`` (Behaviour fields) to override the
script for that request, which is handy for benchmarks. Every request is recorded in
``requests`` with its headers, JSON body and timestamps; ``closed_at`` is set when the
*client* went away before the response ended, and ``wait_closed()`` awaits it.

The shared machinery (:class:`FakeUpstream`, :class:`Behaviour`, :func:`blackhole_port`)
is reused by :mod:`tests.support.fakes.anthropic_upstream`.

Run standalone (e.g. for benchmarks)::

    python -m tests.support.fakes.openai_upstream --port 0 --tokens 20000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from types import TracebackType
from typing import Any, Self

import orjson
from aiohttp import web

WORDS = ("Hello", " world", ",", " héllo", " tokens", " stream", " 🙂", ".", " The", " end")


def token_text(i: int) -> str:
    """The text of the ``i``-th generated token (deterministic)."""
    return WORDS[i % len(WORDS)]


def expected_text(tokens: int) -> str:
    """The whole reply text of a stream of ``tokens`` tokens."""
    return "".join(token_text(i) for i in range(tokens))


def fake_token_count(text: str) -> int:
    """The fake model's tokenizer: one token per character (never one per chunk)."""
    return len(text)


@contextlib.contextmanager
def blackhole_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A loopback port whose connect attempts hang (to provoke a connect timeout).

    The socket listens with a backlog of one and never accepts; once a few connections
    fill its queue, Linux drops further SYNs, so a client's connect waits until its
    own timeout.
    """
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        listener.bind((host, 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        for _ in range(4):
            filler = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((host, port))
        yield port


@dataclass(frozen=True)
class ToolCallSpec:
    """A tool call the fake streams; ``arguments`` goes out in small pieces."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Behaviour:
    """What the fake does for one request. Defaults: stream 5 tokens, no delays."""

    tokens: int = 5
    #: Seconds between tokens.
    delay: float = 0.0
    #: Seconds after the response headers before the first token.
    first_token_delay: float = 0.0
    #: Answer with this HTTP status and an error JSON body instead of a stream.
    status: int | None = None
    retry_after: str | None = None
    error_message: str | None = None
    #: Send an in-band error event after this many tokens, then end the stream.
    error_after: int | None = None
    #: The in-band error's ``type`` (e.g. ``rate_limit_exceeded``, ``overloaded_error``).
    error_type: str = "server_error"
    #: Abort the connection after this many tokens (no finish, no terminator).
    cut_after: int | None = None
    #: Stop sending after this many tokens; hold the connection until the client leaves.
    stall_after: int | None = None
    #: Send a finish chunk (``finish_reason``) at the end.
    finish: bool = True
    #: ``None``: ``"tool_calls"`` when ``tool_calls`` are given, else ``"stop"``.
    finish_reason: str | None = None
    #: OpenAI only: end with ``data: [DONE]``.
    done: bool = True
    #: OpenAI only: send the usage chunk; ``None`` means when ``include_usage`` was asked.
    usage: bool | None = None
    #: Send a ``: ping`` comment (OpenAI) or ``ping`` event (Anthropic) every N tokens.
    ping_every: int = 0
    tool_calls: tuple[ToolCallSpec, ...] = ()
    #: Extra response headers.
    headers: tuple[tuple[str, str], ...] = ()
    #: OpenAI only: send these ``data:`` payloads (each JSON-encoded unless bytes)
    #: instead of the scripted reply: for hostile-upstream tests.
    raw: tuple[Any, ...] = ()

    @property
    def reason(self) -> str:
        """The finish reason in OpenAI terms."""
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"

    async def steps(self) -> AsyncIterator[tuple[str, int]]:
        """The reply's script, paced: ``("ping" | "token", i)``, or a last
        ``("error" | "cut", i)`` after which the stream must end at once. Each fake
        turns the steps into its own wire format."""
        if self.first_token_delay:
            await asyncio.sleep(self.first_token_delay)
        for i in range(self.tokens + 1):
            if i == self.error_after:
                yield "error", i
                return
            if i == self.cut_after:
                yield "cut", i
                return
            if i == self.stall_after:
                await asyncio.sleep(3600)
            if i == self.tokens:
                return
            if i and self.delay:
                await asyncio.sleep(self.delay)
            if self.ping_every and i % self.ping_every == 0:
                yield "ping", i
            yield "token", i

    def overridden(self, spec: Any) -> Behaviour:
        """This behaviour with the fields of an ``x_fake`` dict applied."""
        if not isinstance(spec, dict):
            return self
        names = {f.name for f in fields(self)} - {"tool_calls", "headers", "raw"}
        return replace(self, **{k: v for k, v in spec.items() if k in names})


@dataclass
class TokenizeBehaviour:
    """How the fake's tokenize endpoints answer. Defaults: at once, with the count."""

    #: Seconds before answering.
    delay: float = 0.0
    #: Answer with this HTTP status and an error body instead.
    status: int | None = None
    #: Add a BOS token to every text, as llama-cpp-python does for models that want one.
    bos: bool = False
    #: Answer with this JSON instead (e.g. no count at all).
    body: Any = None


@dataclass
class ReceivedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    #: The client's (host, port): equal for requests sent over one kept-alive connection.
    peer: Any = None
    received_at: float = field(default_factory=time.monotonic)
    #: When the client went away before the response ended (``time.monotonic()``).
    closed_at: float | None = None
    #: When the fake finished sending the response.
    completed_at: float | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)


#: Yielded by an event generator to make :meth:`FakeUpstream.serve_stream` abort the
#: connection (no terminator, no finish): a cut stream.
CUT = None


class FakeUpstream:
    """Server lifecycle, request log and script shared by the fake upstreams."""

    #: Appended to ``http://host:port`` to make :attr:`base_url`.
    base_path = "/v1"

    def __init__(self, script: Sequence[Behaviour] | Behaviour = ()) -> None:
        self.script: list[Behaviour] = (
            [script] if isinstance(script, Behaviour) else list(script) or [Behaviour()]
        )
        self.requests: list[ReceivedRequest] = []
        self._served = 0
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def routes(self) -> list[web.RouteDef]:
        """The fake's routes; subclasses define them."""
        raise NotImplementedError

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: any free port) and return :attr:`base_url`."""
        app = web.Application()
        app.add_routes(self.routes())
        # handler_cancellation: a stalled handler learns the client left by being
        # cancelled, which is how ``closed_at`` gets recorded.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_port = self._runner.addresses[0][1]
        netloc = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{netloc}:{bound_port}{self.base_path}"
        return self.base_url

    async def stop(self) -> None:
        """Stop listening and drop open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def wait_closed(self, index: int = -1, timeout: float = 5.0) -> float:
        """Wait until request ``index`` was closed by the client; return ``closed_at``."""
        received = self.requests[index]
        await asyncio.wait_for(received.closed.wait(), timeout)
        assert received.closed_at is not None
        return received.closed_at

    async def record(self, request: web.Request) -> tuple[ReceivedRequest, Behaviour]:
        """Log ``request`` and pick its behaviour from the script (or ``x_fake``)."""
        body = await request.json() if request.can_read_body else None
        peer = request.transport.get_extra_info("peername") if request.transport else None
        received = ReceivedRequest(
            request.method, request.path, dict(request.headers), body, peer=peer
        )
        self.requests.append(received)
        behaviour = self.script[min(self._served, len(self.script) - 1)]
        self._served += 1
        if isinstance(body, dict) and "x_fake" in body:
            behaviour = behaviour.overridden(body["x_fake"])
        return received, behaviour

    async def serve_stream(
        self,
        request: web.Request,
        received: ReceivedRequest,
        behaviour: Behaviour,
        events: Any,
    ) -> web.StreamResponse:
        """Send ``events`` (an async iterator of bytes) as an event stream."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", **dict(behaviour.headers)}
        )
        try:
            await response.prepare(request)
            async for chunk in events:
                if chunk is CUT:
                    assert request.transport is not None
                    request.transport.abort()
                    received.completed_at = time.monotonic()
                    return response
                await response.write(chunk)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError) as exc:
            received.closed_at = time.monotonic()
            received.closed.set()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return response
        received.completed_at = time.monotonic()
        return response


def _error_type(status: int) -> tuple[str, str | None]:
    return {
        400: ("invalid_request_error", None),
        401: ("invalid_request_error", "invalid_api_key"),
        403: ("permission_error", None),
        404: ("invalid_request_error", "model_not_found"),
        422: ("invalid_request_error", None),
        429: ("rate_limit_exceeded", "rate_limit_exceeded"),
    }.get(status, ("server_error", None))


class FakeOpenAIUpstream(FakeUpstream):
    """``POST /v1/chat/completions`` (streaming or not) and ``GET /v1/models``."""

    def __init__(
        self,
        script: Sequence[Behaviour] | Behaviour = (),
        *,
        models: Sequence[str] = ("fake-upstream",),
    ) -> None:
        super().__init__(script)
        self.models = list(models)
        self.tokenize = TokenizeBehaviour()
        self.tokenize_requests: list[ReceivedRequest] = []

    def routes(self) -> list[web.RouteDef]:
        """The OpenAI endpoints the fake serves, and local servers' tokenize endpoints."""
        return [
            web.post("/v1/chat/completions", self._chat),
            web.get("/v1/models", self._models),
            web.post("/extras/tokenize/count", self._tokenize),
            web.post("/extras/tokenize", self._tokenize),
            web.post("/tokenize", self._tokenize),
        ]

    async def _tokenize(self, request: web.Request) -> web.Response:
        """llama-cpp-python ``{"input"}``, llama.cpp ``{"content"}``, vLLM ``{"prompt"}``."""
        body = await request.json()
        self.tokenize_requests.append(
            ReceivedRequest(request.method, request.path, dict(request.headers), body)
        )
        behaviour = self.tokenize
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        if behaviour.status is not None:
            error = {"message": "fake tokenize error", "type": "server_error"}
            return web.json_response({"error": error}, status=behaviour.status)
        if behaviour.body is not None:
            return web.json_response(behaviour.body)
        text = body.get("input", body.get("content", body.get("prompt")))
        if not isinstance(text, str):
            return web.json_response({"detail": "no text"}, status=422)
        if request.path.startswith("/extras/"):
            special = True  # llama-cpp-python adds the model's BOS, always
        elif "prompt" in body:
            special = body.get("add_special_tokens", True)  # vLLM's default
        else:
            special = body.get("add_special", False)  # llama.cpp's default
        count = fake_token_count(text) + (1 if behaviour.bos and special else 0)
        if request.path == "/extras/tokenize/count":
            return web.json_response({"count": count})
        if "prompt" in body:  # vLLM
            return web.json_response({"count": count, "tokens": list(range(count))})
        return web.json_response({"tokens": list(range(count))})

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        received, behaviour = await self.record(request)
        body = received.json if isinstance(received.json, dict) else {}
        if behaviour.status is not None:
            return self._error_response(behaviour, request)
        if not body.get("stream"):
            return web.json_response(_completion(body, behaviour))
        return await self.serve_stream(request, received, behaviour, _stream(body, behaviour))

    def _error_response(self, behaviour: Behaviour, request: web.Request) -> web.Response:
        status = behaviour.status or 500
        error_type, code = _error_type(status)
        message = behaviour.error_message or f"fake upstream error {status}"
        if status == 401:
            # Harsher than OpenAI (which masks the key): tests check it is never relayed.
            key = request.headers.get("Authorization", "").removeprefix("Bearer ")
            message = f"Incorrect API key provided: {key}."
        headers = dict(behaviour.headers)
        if behaviour.retry_after is not None:
            headers["Retry-After"] = behaviour.retry_after
        error = {"message": message, "type": error_type, "param": None, "code": code}
        return web.json_response({"error": error}, status=status, headers=headers)


def _prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages") or []
    return sum(len(str(m.get("content", "")).split()) + 3 for m in messages if isinstance(m, dict))


def _completion(body: dict[str, Any], behaviour: Behaviour) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": expected_text(behaviour.tokens)}
    if behaviour.tool_calls:
        message["tool_calls"] = [
            {"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments}}
            for t in behaviour.tool_calls
        ]
    prompt = _prompt_tokens(body)
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake-upstream"),
        "choices": [{"index": 0, "message": message, "finish_reason": behaviour.reason}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": behaviour.tokens,
            "total_tokens": prompt + behaviour.tokens,
        },
    }


async def _stream(body: dict[str, Any], behaviour: Behaviour) -> Any:
    """The event bytes of a streamed reply; :data:`CUT` means: abort the connection now."""
    head = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", "fake-upstream"),
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n"

    yield chunk({"role": "assistant", "content": ""})
    if behaviour.raw:
        for payload in behaviour.raw:
            data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
            yield b"data: " + data + b"\n\n"
        return
    async for step, i in behaviour.steps():
        if step == "error":
            error = {"message": "fake in-band error", "type": behaviour.error_type}
            yield b"data: " + orjson.dumps({"error": {**error, "param": None, "code": None}})
            yield b"\n\n"
            return
        if step == "cut":
            yield CUT
            return
        yield b": ping\n\n" if step == "ping" else chunk({"content": token_text(i)})
    for n, call in enumerate(behaviour.tool_calls):
        start_call = {"index": n, "id": call.id, "type": "function"}
        yield chunk({"tool_calls": [{**start_call, "function": {"name": call.name}}]})
        for start in range(0, len(call.arguments), 4):
            piece = {"arguments": call.arguments[start : start + 4]}
            yield chunk({"tool_calls": [{"index": n, "function": piece}]})
    if behaviour.finish:
        yield chunk({}, behaviour.reason)
    include_usage = (body.get("stream_options") or {}).get("include_usage", False)
    if behaviour.usage if behaviour.usage is not None else include_usage:
        prompt = _prompt_tokens(body)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": behaviour.tokens,
            "total_tokens": prompt + behaviour.tokens,
        }
        yield b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n"
    if behaviour.done:
        yield b"data: [DONE]\n\n"


async def _serve_forever(args: argparse.Namespace) -> None:
    fake = FakeOpenAIUpstream(Behaviour(tokens=args.tokens, delay=args.delay))
    print(await fake.start(args.host, args.port), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


def main() -> None:
    """Serve the fake until interrupted; prints its base URL on the first line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args))


if __name__ == "__main__":
    main()
