"""Relaying one reply: provider events -> chunk bytes -> SSE writer -> socket.

A streaming reply runs as two tasks. The *pump* starts the upstream (retries and
fallbacks included, :mod:`gateway.attempts`) and writes every event as it comes.
The request's own task supervises it: it sends keep-alive pings when nothing was
written for ``heartbeat_seconds``, enforces the idle timeout between events, and,
when the client goes away (aiohttp cancels the handler), cancels the pump, which
closes the provider's iterator and so the upstream request.

Errors take one of two channels. Before the response headers went out, they
propagate as :class:`GatewayError` (a JSON body with a status). After, exactly
one in-band ``data: {"error": ...}`` event ends the stream, with no ``[DONE]``,
so a cut reply never looks complete. Note the trade-off of keep-alives: once a
ping has gone out before the first token, a later failure to start can only be
reported in-band.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway import sse
from gateway.attempts import Opened, close_events, open_stream
from gateway.errors import GatewayError, ShuttingDown, UpstreamTimeout, from_provider_error
from gateway.event_stream import ClientGone, EventStream, SendTimeout
from gateway.registry import Route
from gateway.schema import ChatCompletionRequest, ChunkEncoder, completion_body
from providers.base import ChatRequest
from providers.errors import ProviderError, ProviderUnavailable
from providers.events import Finish, FinishReason, TextDelta, ToolCallDelta, Usage
from providers.tokenizer import Tokenizer

log = structlog.get_logger("tokenpipe.relay")


@dataclass(slots=True)
class Reply:
    """What one request asked for and what it got; logged once at the end."""

    request: ChatCompletionRequest
    routes: list[Route]
    request_id: str
    tokenizer: Tokenizer
    started: float = field(default_factory=time.perf_counter)
    route: Route | None = None
    completion_tokens: int = 0
    first_token_at: float | None = None
    finish: FinishReason | None = None
    usage: Usage | None = None
    reason: str = "upstream_error"
    #: Set when the drain time ran out and this reply is being cut.
    shutting_down: bool = False
    texts: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)

    def build_request(self, route: Route) -> ChatRequest:
        """The provider-neutral request for one route."""
        req = self.request
        options = {**route.config.options, **(req.fake or {})}
        return ChatRequest(
            model=route.config.upstream_name,
            messages=[m.model_dump(exclude_none=True) for m in req.messages],
            max_tokens=req.token_limit,
            seed=req.seed,
            params=req.passthrough_params(),
            options=options,
        )

    def prompt_tokens(self) -> int:
        if self.usage is not None:
            return self.usage.prompt_tokens
        return self.tokenizer.count_messages(
            m.model_dump(exclude_none=True) for m in self.request.messages
        )

    def reported_completion_tokens(self) -> int:
        """The upstream's count, else tiktoken's over the text (an upstream chunk may
        carry several tokens, so counting events would undercount)."""
        if self.usage is not None:
            return self.usage.completion_tokens
        return self.tokenizer.count("".join(self.texts)) if self.texts else 0

    def log_finished(self, **extra: Any) -> None:
        now = time.perf_counter()
        ttft = self.first_token_at - self.started if self.first_token_at is not None else None
        log.info(
            "stream_finished",
            reason=self.reason,
            finish_reason=self.finish,
            route=self.route.name if self.route else None,
            provider=self.route.provider_kind if self.route else None,
            completion_tokens=self.completion_tokens,
            ttft_ms=round(ttft * 1000, 2) if ttft is not None else None,
            duration_ms=round((now - self.started) * 1000, 2),
            **extra,
        )


def _end_reason(exc: BaseException) -> str:
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, ShuttingDown):
        return "shutdown"
    return "upstream_error"


def _shutdown_error() -> ShuttingDown:
    return ShuttingDown(
        "The server is shutting down and the reply was cut short; retry the request.",
        headers={"Retry-After": "1"},
    )


def _in_band(exc: GatewayError) -> bytes:
    return sse.data_event(orjson.dumps(exc.body()))


class StreamSession:
    """One streaming reply; see the module docstring."""

    def __init__(
        self,
        http_request: web.Request,
        reply: Reply,
        *,
        heartbeat: float,
        send_timeout: float,
        headers: dict[str, str],
        inflight: dict[asyncio.Task[None], Reply],
    ) -> None:
        self.reply = reply
        self._inflight = inflight
        self.stream = EventStream(http_request, headers=headers, send_timeout=send_timeout)
        self._heartbeat = heartbeat
        self._loop = asyncio.get_running_loop()
        self._last_event = self._loop.time()
        self._first_event = asyncio.Event()
        self._http_request = http_request

    async def run(self) -> web.StreamResponse:
        """Relay the reply; raises :class:`GatewayError` only before headers went out."""
        pump = asyncio.create_task(self._pump())
        self._inflight[pump] = self.reply
        try:
            outcome = await self._supervise(pump)
        except asyncio.CancelledError:
            self.reply.reason = self._cancel_reason()
            await self._stop(pump)
            self.reply.log_finished()
            raise
        finally:
            del self._inflight[pump]
        if isinstance(outcome, GatewayError):
            self.reply.reason = _end_reason(outcome)
            if not self.stream.opened:
                self.reply.log_finished(error=outcome.message)
                raise outcome
            await self._send_error(outcome)
        elif isinstance(outcome, ClientGone):
            self.reply.reason = "client_gone"
        elif isinstance(outcome, SendTimeout):
            self.reply.reason = "send_timeout"
            transport = self._http_request.transport
            if transport is not None:
                transport.abort()
        elif outcome is not None:
            self.reply.reason = "internal_error"
            log.error("stream_failed", exc_info=outcome)
            if not self.stream.opened:
                self.reply.log_finished()
                raise outcome
            await self._send_error(GatewayError("The gateway failed while streaming."))
        self.reply.log_finished()
        return self.stream.response

    async def _supervise(self, pump: asyncio.Task[None]) -> BaseException | None:
        """Wait for the pump, sending pings and enforcing the idle timeout.

        Returns how the pump ended: ``None`` for a complete reply, else the exception.
        """
        while True:
            last = self.stream.last_write if self.stream.opened else self._last_event
            wake = last + self._heartbeat
            idle_limit = self._idle_limit()
            if idle_limit is not None:
                wake = min(wake, self._last_event + idle_limit)
            await self._wait(pump, max(0.0, wake - self._loop.time()))
            if pump.done():
                if pump.cancelled():  # only ``GatewayState.cut_inflight`` cancels it
                    return _shutdown_error()
                return pump.exception()
            now = self._loop.time()
            if idle_limit is not None and now - self._last_event >= idle_limit:
                await self._stop(pump)
                return UpstreamTimeout(f"upstream sent nothing for {idle_limit:g} s (idle timeout)")
            last = self.stream.last_write if self.stream.opened else self._last_event
            if now - last >= self._heartbeat:
                try:
                    await self.stream.ping()
                except (ClientGone, SendTimeout) as exc:
                    await self._stop(pump)
                    return exc

    async def _wait(self, pump: asyncio.Task[None], delay: float) -> None:
        """Wait for the pump to end or ``delay`` seconds; before the first event, also for it
        (the idle timer starts then)."""
        if self._first_event.is_set():
            await asyncio.wait({pump}, timeout=delay)
            return
        first = asyncio.ensure_future(self._first_event.wait())
        try:
            await asyncio.wait({pump, first}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            first.cancel()

    def _idle_limit(self) -> float | None:
        route = self.reply.route
        if route is None or not self._first_event.is_set():
            return None  # before the first event, attempts enforce first_token
        return route.config.timeouts.idle

    async def _stop(self, pump: asyncio.Task[None]) -> None:
        pump.cancel()
        await asyncio.wait({pump})

    def _cancel_reason(self) -> str:
        transport = self._http_request.transport
        if transport is None or transport.is_closing():
            return "client_gone"
        return "shutdown"

    async def _send_error(self, exc: GatewayError) -> None:
        try:
            await self.stream.send(_in_band(exc))
        except (ClientGone, SendTimeout):
            return
        await self.stream.close()

    async def _pump(self) -> None:
        reply = self.reply
        try:
            opened = await open_stream(reply.routes, reply.build_request)
        except ProviderError as exc:
            raise from_provider_error(exc) from None
        reply.route = opened.route
        structlog.contextvars.bind_contextvars(
            route=opened.route.name, provider=opened.route.provider_kind
        )
        try:
            await self._relay(opened)
        except ProviderError as exc:
            raise from_provider_error(exc) from None
        finally:
            await close_events(opened.events)

    async def _relay(self, opened: Opened) -> None:
        reply = self.reply
        stream = self.stream
        send = stream.send
        frame = sse.data_event
        loop = self._loop
        created = int(time.time())
        encoder = ChunkEncoder(
            id=f"chatcmpl-{reply.request_id}",
            created=created,
            model=reply.request.model,
            include_usage=reply.request.include_usage,
        )
        self._last_event = loop.time()
        self._first_event.set()
        await stream.open()
        await send(frame(encoder.role()))

        event = opened.first
        events = opened.events
        texts = reply.texts
        content_event = encoder.content_event
        tokens = 0
        try:
            while True:
                if isinstance(event, TextDelta):
                    text = event.text
                    await send(content_event(text))
                    texts.append(text)
                    tokens += 1
                    if tokens == 1:
                        reply.first_token_at = time.perf_counter()
                elif isinstance(event, ToolCallDelta):
                    await send(frame(encoder.tool_call(event)))
                    if reply.first_token_at is None:
                        reply.first_token_at = time.perf_counter()
                elif isinstance(event, Finish):
                    reply.finish = event.reason
                    await send(frame(encoder.finish(event.reason)))
                elif isinstance(event, Usage):
                    reply.usage = event
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    break
                self._last_event = loop.time()
        finally:
            reply.completion_tokens = tokens
        if reply.finish is None:
            raise ProviderUnavailable("upstream stream ended without a finish reason")
        if reply.request.include_usage:
            await send(
                frame(encoder.usage(reply.prompt_tokens(), reply.reported_completion_tokens()))
            )
        await send(sse.DONE)
        reply.reason = "length" if reply.finish == "length" else "stop"
        await stream.close()


async def collect(reply: Reply, inflight: dict[asyncio.Task[None], Reply]) -> dict[str, Any]:
    """A non-streaming reply: the whole ``chat.completion`` body.

    Raises :class:`GatewayError`; a client that goes away cancels the task, which
    closes the provider's iterator.
    """
    task = asyncio.current_task()
    assert task is not None
    inflight[task] = reply
    try:
        try:
            opened = await open_stream(reply.routes, reply.build_request)
        except ProviderError as exc:
            raise from_provider_error(exc) from None
        reply.route = opened.route
        structlog.contextvars.bind_contextvars(
            route=opened.route.name, provider=opened.route.provider_kind
        )
        try:
            await _gather(reply, opened)
        except ProviderError as exc:
            raise from_provider_error(exc) from None
        except TimeoutError:
            raise UpstreamTimeout(
                f"upstream sent nothing for {opened.route.config.timeouts.idle:g} s (idle timeout)"
            ) from None
        finally:
            await close_events(opened.events)
    except GatewayError as exc:
        reply.reason = _end_reason(exc)
        reply.log_finished(error=exc.message)
        raise
    except asyncio.CancelledError:
        if not reply.shutting_down:
            reply.reason = "client_gone"
            reply.log_finished()
            raise
        task.uncancel()
        reply.reason = "shutdown"
        reply.log_finished()
        raise _shutdown_error() from None
    finally:
        del inflight[task]
    assert reply.finish is not None
    reply.reason = "length" if reply.finish == "length" else "stop"
    reply.log_finished()
    tool_calls = [reply.tool_calls[i] for i in sorted(reply.tool_calls)]
    return completion_body(
        id=f"chatcmpl-{reply.request_id}",
        created=int(time.time()),
        model=reply.request.model,
        content="".join(reply.texts),
        tool_calls=tool_calls,
        finish_reason=reply.finish,
        prompt_tokens=reply.prompt_tokens(),
        completion_tokens=reply.reported_completion_tokens(),
    )


async def _gather(reply: Reply, opened: Opened) -> None:
    idle = opened.route.config.timeouts.idle
    loop = asyncio.get_running_loop()
    event = opened.first
    async with asyncio.timeout_at(loop.time() + idle) as deadline:
        while True:
            if isinstance(event, TextDelta):
                reply.texts.append(event.text)
                reply.completion_tokens += 1
                if reply.first_token_at is None:
                    reply.first_token_at = time.perf_counter()
            elif isinstance(event, ToolCallDelta):
                call = reply.tool_calls.setdefault(
                    event.index,
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if event.id is not None:
                    call["id"] = event.id
                if event.name is not None:
                    call["function"]["name"] = event.name
                call["function"]["arguments"] += event.arguments
            elif isinstance(event, Finish):
                reply.finish = event.reason
            elif isinstance(event, Usage):
                reply.usage = event
            try:
                event = await anext(opened.events)
            except StopAsyncIteration:
                break
            deadline.reschedule(loop.time() + idle)
    if reply.finish is None:
        raise ProviderUnavailable("upstream stream ended without a finish reason")
