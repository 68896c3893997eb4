"""Relaying one streamed reply: provider events -> chunk bytes -> SSE writer -> socket.

The request's own task starts the upstream (retries and fallbacks included,
:mod:`gateway.attempts`) and writes every event as it comes. Beside it runs one
timer, the *watchdog*, never touched per token: when it fires it sends a
keep-alive ping if nothing was written for ``heartbeat_seconds``, and enforces the
idle timeout between events, then sets itself again for the next deadline.

Ending early is cancellation, from one of three places: aiohttp cancels the task
when the client disconnects; the watchdog cancels it on an idle timeout or a send
timeout of a ping; the drain (``GatewayState.cut_inflight``) cancels it when the
server's drain time ran out. Cancellation closes the provider's iterator, and so
the upstream request. For the last two the task knows why (``_cut``), stops the
cancellation and reports it.

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
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from aiohttp import web

from gateway import sse
from gateway.attempts import Opened, close_events
from gateway.errors import GatewayError, UpstreamTimeout, from_provider_error
from gateway.event_stream import ClientGone, EventStream, SendTimeout
from gateway.reply import Reply, end_reason, shutdown_error
from gateway.schema import ChunkEncoder
from providers.errors import ProviderError, ProviderUnavailable
from providers.events import Finish, TextDelta, ToolCallDelta, Usage

if TYPE_CHECKING:
    from collections.abc import Callable

log = structlog.get_logger("tokenpipe.relay")


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
        inflight: dict[asyncio.Task[Any], Reply],
    ) -> None:
        self.reply = reply
        self.stream = EventStream(http_request, headers=headers, send_timeout=send_timeout)
        self._http_request = http_request
        self._inflight = inflight
        self._heartbeat = heartbeat
        self._loop = asyncio.get_running_loop()
        #: Loop time of the last provider event (the start, before the first one).
        self._last_event = self._loop.time()
        self._idle: float | None = None  # the idle timeout, once the first event came
        self._watchdog: asyncio.TimerHandle | None = None
        self._ping: asyncio.Task[None] | None = None
        #: Why this session cancelled its own task, when it did.
        self._cut: Exception | None = None
        self._task: asyncio.Task[object] | None = None

    async def run(self) -> web.StreamResponse:
        """Relay the reply; raises :class:`GatewayError` only before headers went out."""
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._inflight[task] = self.reply
        self._arm()
        try:
            outcome = await self._outcome(task)
            self._disarm()
            await self._finish(outcome)
        except asyncio.CancelledError:  # the client left, or the loop is closing
            self.reply.reason = self._cancel_reason()
            self.reply.log_finished()
            raise
        finally:
            self._disarm()
            if self._ping is not None:
                self._ping.cancel()
            del self._inflight[task]
        return self.stream.response

    async def _outcome(self, task: asyncio.Task[object]) -> Exception | None:
        """Run the pump; how it ended: None for a complete reply, else the exception."""
        try:
            await self._pump()
        except asyncio.CancelledError:
            if self.reply.shutting_down:
                self._cut = shutdown_error()
            if self._cut is None:
                raise
            task.uncancel()
            return self._cut
        except Exception as exc:
            return exc
        return None

    async def _finish(self, outcome: Exception | None) -> None:
        reply = self.reply
        if isinstance(outcome, GatewayError):
            reply.reason = end_reason(outcome)
            if not self.stream.opened:
                reply.log_finished(error=outcome.message)
                raise outcome
            await self._send_error(outcome)
        elif isinstance(outcome, ClientGone):
            reply.reason = "client_gone"
        elif isinstance(outcome, SendTimeout):
            reply.reason = "send_timeout"
            transport = self._http_request.transport
            if transport is not None:
                transport.abort()
        elif outcome is not None:
            reply.reason = "internal_error"
            log.error("stream_failed", exc_info=outcome)
            if not self.stream.opened:
                reply.log_finished()
                raise outcome
            await self._send_error(GatewayError("The gateway failed while streaming."))
        reply.log_finished()

    # The watchdog: a timer, set again each time it fires (never per token).

    def _arm(self) -> None:
        stream = self.stream
        last_write = stream.last_write if stream.opened else self._last_event
        due = last_write + self._heartbeat
        if self._idle is not None:
            due = min(due, self._last_event + self._idle)
        self._disarm()
        self._watchdog = self._loop.call_at(due, self._tick)

    def _disarm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _tick(self) -> None:
        self._watchdog = None
        now = self._loop.time()
        if self._idle is not None and now - self._last_event >= self._idle:
            self._cancel_with(
                UpstreamTimeout(f"upstream sent nothing for {self._idle:g} s (idle timeout)")
            )
            return
        stream = self.stream
        last_write = stream.last_write if stream.opened else self._last_event
        if now - last_write >= self._heartbeat and (self._ping is None or self._ping.done()):
            self._ping = asyncio.ensure_future(self._send_ping())
            self._watchdog = self._loop.call_at(
                min(now + self._heartbeat, self._idle_due(now)), self._tick
            )
            return
        self._arm()

    def _idle_due(self, now: float) -> float:
        return self._last_event + self._idle if self._idle is not None else now + 1e9

    async def _send_ping(self) -> None:
        try:
            await self.stream.ping()
        except SendTimeout as exc:
            self._cancel_with(exc)
        except ClientGone:
            pass  # aiohttp cancels the handler when the connection is lost

    def _cancel_with(self, reason: Exception) -> None:
        if self._cut is None and self._task is not None:
            self._cut = reason
            self._task.cancel()

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

    # The pump: everything per token happens here.

    async def _pump(self) -> None:
        opened = await self.reply.open()
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
        frame: Callable[[bytes], bytes] = sse.data_event
        loop = self._loop
        encoder = ChunkEncoder(
            id=f"chatcmpl-{reply.request_id}",
            created=int(time.time()),
            model=reply.request.model,
            include_usage=reply.request.include_usage,
        )
        # The idle timer starts with the first event.
        self._last_event = loop.time()
        self._idle = opened.route.config.timeouts.idle
        self._arm()
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
            usage = encoder.usage(reply.prompt_tokens(), reply.reported_completion_tokens())
            await send(frame(usage))
        await send(sse.DONE)
        reply.reason = "length" if reply.finish == "length" else "stop"
        await stream.close()
