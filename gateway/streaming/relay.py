"""Relaying one streamed reply: provider events -> dialect encoder -> SSE writer -> socket.

The request's own task starts the upstream (retries and fallbacks included,
:mod:`gateway.routing.attempts`) and writes every event as it comes, framed by the
request's dialect encoder (:mod:`gateway.dialects.base`); the relay knows no wire
format. Beside it runs the :class:`~gateway.streaming.watchdog.Watchdog`.

Ending early is cancellation, from one of three places: aiohttp cancels the task
when the client disconnects; the watchdog cancels it on an idle timeout or a send
timeout of a ping; the drain (``GatewayState.cut_inflight``) cancels it when the
server's drain time ran out. Cancellation closes the provider's iterator, and so
the upstream request. For the last two the task knows why (``_cut``), stops the
cancellation and reports it.

Errors take one of two channels. Before the response headers went out, they
propagate as :class:`GatewayError` (a JSON body with a status). After, exactly
one in-band error event (the encoder's) ends the stream, with no terminal frame,
so a cut reply never looks complete. Note the trade-off of keep-alives: once a
ping has gone out before the first token, a later failure to start can only be
reported in-band.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from aiohttp import web

from gateway.dialects.base import Encoder
from gateway.errors import GatewayError, from_provider_error
from gateway.routing.attempts import Opened, close_events
from gateway.streaming.record import ReplyRecord, end_reason, shutdown_error
from gateway.streaming.watchdog import Watchdog
from gateway.streaming.writer import ClientGone, EventStream, SendTimeout
from providers.errors import ProviderError
from providers.events import Finish, StreamEvent, TextDelta, ToolCallDelta

log = structlog.get_logger("tokenpipe.relay")


class StreamSession:
    """One streaming reply; see the module docstring."""

    def __init__(
        self,
        http_request: web.Request,
        record: ReplyRecord,
        encoder: Encoder,
        *,
        heartbeat: float,
        send_timeout: float,
        headers: dict[str, str],
    ) -> None:
        self.record = record
        self.encoder = encoder
        self.stream = EventStream(http_request, headers=headers, send_timeout=send_timeout)
        self._http_request = http_request
        self.watchdog = Watchdog(self.stream, heartbeat=heartbeat, cut=self._cancel_with)
        #: Why this session cancelled its own task, when it did.
        self._cut: Exception | None = None
        self._task: asyncio.Task[object] | None = None

    async def run(self) -> web.StreamResponse:
        """Relay the reply; raises :class:`GatewayError` only before headers went out."""
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self.watchdog.arm()
        try:
            outcome = await self._outcome(task)
            self.watchdog.disarm()
            await self._finish(outcome)
        except asyncio.CancelledError:  # the client left, or the loop is closing
            self.record.end(self._cancel_reason())
            raise
        finally:
            self.watchdog.stop()
        return self.stream.response

    async def _outcome(self, task: asyncio.Task[object]) -> Exception | None:
        """Run the pump; how it ended: None for a complete reply, else the exception."""
        try:
            await self._pump()
        except asyncio.CancelledError:
            if self.record.shutting_down:
                self._cut = shutdown_error()
            if self._cut is None:
                raise
            task.uncancel()
            return self._cut
        except Exception as exc:
            return exc
        return None

    async def _finish(self, outcome: Exception | None) -> None:
        record = self.record
        if outcome is None:
            record.end_ok()
        elif isinstance(outcome, GatewayError):
            record.end(end_reason(outcome), outcome)
            if not self.stream.opened:
                raise outcome
            await self._send_error(outcome)
        elif isinstance(outcome, ClientGone):
            record.end("client_gone")
        elif isinstance(outcome, SendTimeout):
            record.end("send_timeout")
            transport = self._http_request.transport
            if transport is not None:
                transport.abort()
        else:
            log.error("stream_failed", exc_info=outcome)
            record.end("internal_error")
            if not self.stream.opened:
                raise outcome
            await self._send_error(GatewayError("The gateway failed while streaming."))

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
            await self.stream.send(self.encoder.error(exc))
        except (ClientGone, SendTimeout):
            return
        await self.stream.close()

    # The pump: everything per token happens here.

    async def _pump(self) -> None:
        opened = await self.record.open()
        try:
            await self._relay(opened)
        except ProviderError as exc:
            raise from_provider_error(exc) from None
        finally:
            await close_events(opened.events)

    async def _relay(self, opened: Opened) -> None:
        record = self.record
        stream = self.stream
        send = stream.send
        encoder = self.encoder
        watchdog = self.watchdog
        loop = asyncio.get_running_loop()
        # The idle timer starts with the first event.
        watchdog.last_event = loop.time()
        watchdog.idle = opened.route.config.timeouts.idle
        watchdog.arm()
        await stream.open()
        await send(encoder.start())

        event = opened.first
        events = opened.events
        texts = record.texts
        text_frame = encoder.text
        apply = record.apply
        meter = record.meter
        while True:
            if type(event) is TextDelta:
                text = event.text
                await send(text_frame(text))
                if not texts:
                    record.first_token_at = time.perf_counter()
                texts.append(text)
                if meter is not None and len(texts) >= meter.next_debit:
                    await meter.debit(len(texts))
            else:
                apply(event)
                frame = _frame_of(encoder, event)
                if frame:
                    await send(frame)
            try:
                event = await anext(events)
            except StopAsyncIteration:
                break
            watchdog.last_event = loop.time()
        record.check_complete()
        await record.count_prompt()  # a large prompt is counted off the loop
        await send(encoder.end(record.usage_counts))
        await stream.close()


def _frame_of(encoder: Encoder, event: StreamEvent) -> bytes:
    """The frame of a non-text event (usage has none: it comes with the end)."""
    if isinstance(event, ToolCallDelta):
        return encoder.tool_call(event)
    if isinstance(event, Finish):
        return encoder.finish(event.reason, event.stop_sequence)
    return b""
