"""Producing one streamed (or background) reply into its log, and to its first response.

The producer is one task per reply. It starts the upstream (retries and
fallbacks included, :mod:`gateway.routing.attempts`), appends every event to the
reply's log (:mod:`gateway.streaming.replylog`) and, while the creating response
(the *primary*) is attached, writes the event's frame to it directly, numbered by
a :class:`~gateway.streaming.replylog.Sequencer`: one list append and one write
per token, no queue. Resumed responses read the log (``gateway.http.resume``).
Beside the producer runs the :class:`~gateway.streaming.watchdog.Watchdog`.

The primary leaving (aiohttp cancels its handler, or a write fails) ends the reply
at once, as a cancellation of the producer, unless the reply is a background one
(it runs to its end) or ``detach_grace`` is set (it ends that much later unless a
resumed reader is attached then). Other ends by cancellation: the watchdog on an
idle timeout or a ping's send timeout; ``POST .../cancel`` (``ReplyCancelled``);
the drain (``GatewayState.cut_inflight``) when its time ran out. The producer
knows why (``_cut``), stops the cancellation and reports it.

Errors take one of two channels. Before the primary's headers went out, the
handler raises the :class:`GatewayError` (a JSON body with a status). After,
exactly one in-band error event (the encoder's) ends the stream, with no terminal
frame, so a cut reply never looks complete. The log records the same error, so
every reader ends alike. Note the trade-off of keep-alives: once a ping has gone
out before the first token, a later failure to start can only be reported in-band.
So it is with ``open_on_accept`` (off by default): the stream opens (200, headers,
the opening frames) once the upstream accepts the request, as an OpenAI-compatible
server's own stream does, and its first token goes out alone. A failure after that
and before the first token, once retries and fallbacks are spent, is in-band too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import structlog
from aiohttp import web

from gateway.dialects.base import Encoder
from gateway.errors import GatewayError, ReplyCancelled, from_provider_error
from gateway.routing.attempts import Opened, close_events, open_stream
from gateway.streaming.record import ReplyRecord, end_reason, shutdown_error
from gateway.streaming.replylog import Ended, ReplyLog, Sequencer
from gateway.streaming.watchdog import Ticker, Watchdog
from gateway.streaming.writer import ClientGone, EventStream, SendTimeout
from providers.errors import ProviderError
from providers.events import Finish, StreamEvent, TextDelta, TokenCount, ToolCallDelta, Usage

log = structlog.get_logger("tokenpipe.relay")

#: ``GatewayState.track``: counts the reply as in flight (produced by the task) while inside.
Track = Callable[[ReplyRecord, "asyncio.Task[None]"], AbstractContextManager[None]]


class StreamSession:
    """One reply's producer; see the module docstring."""

    def __init__(
        self, record: ReplyRecord, *, track: Track, heartbeat: float, ticker: Ticker
    ) -> None:
        # Made before the upstream is asked, so as little as can be: the rest comes
        # with :meth:`set_up`, while the upstream works on its first token.
        self.record = record
        self._track = track
        #: The reply counted in flight, from :meth:`set_up` to the producer's end.
        self._tracking: AbstractContextManager[None] | None = None
        #: The creating response, while attached (from :meth:`set_up`).
        self.primary: EventStream | None = None
        self._http_request: web.Request | None = None
        self._response: web.StreamResponse | None = None
        self._background = False
        self._grace = 0.0
        self.watchdog = Watchdog(None, heartbeat=heartbeat, cut=self._on_cut, ticker=ticker)
        #: Why this session cancelled its own task, when it did.
        self._cut: Exception | None = None
        self._task: asyncio.Task[None] | None = None
        self._grace_timer: asyncio.TimerHandle | None = None
        #: Open the primary when the upstream accepts (``set_up``'s ``open_on_accept``).
        self._open_on_accept = False
        #: The sequence started and the primary opened (:meth:`_open_primary`).
        self._opened = False
        loop = asyncio.get_running_loop()
        #: Resolved by :meth:`set_up`; cancelled by :meth:`abandon`.
        self._ready: asyncio.Future[None] = loop.create_future()
        #: Resolved when the primary is done with: its response, or the error to answer
        #: as JSON (raised). The handler awaits it; cancelled with the handler.
        self._primary_done: asyncio.Future[web.StreamResponse] = loop.create_future()

    def set_up(
        self,
        http_request: web.Request | None,
        encoder: Encoder,
        *,
        reply_log: ReplyLog,
        send_timeout: float,
        headers: dict[str, str],
        late_headers: Callable[[], dict[str, str]] | None = None,
        retry_ms: int = 1000,
        background: bool = False,
        detach_grace: float = 0.0,
        ids: bool = True,
        open_on_accept: bool = False,
    ) -> None:
        """The rest of the session, made while the upstream starts (:meth:`start`
        came first); the producer goes on from its first event once this is done."""
        self._open_on_accept = open_on_accept
        self.encoder = encoder
        self.reply_log = reply_log
        self.sequencer = Sequencer(encoder, retry_ms=retry_ms, ids=ids)
        if http_request is not None:
            self.primary = EventStream(
                http_request,
                headers=headers,
                late_headers=late_headers,
                send_timeout=send_timeout,
                hold_headers=True,
            )
            self._response = self.primary.response
            self.watchdog.attach(self.primary)
            self._primary_done.add_done_callback(self._handler_done)
        self._http_request = http_request
        self._background = background
        self._grace = detach_grace
        self.record.observers.append(self._log_end)
        reply_log.on_cancel = self.cancel
        assert self._task is not None, "start() comes first"
        self._tracking = self._track(self.record, self._task)
        self._tracking.__enter__()
        self.watchdog.arm()
        self._ready.set_result(None)

    def abandon(self, reason: str, error: GatewayError | None = None) -> None:
        """Give the reply up before :meth:`set_up` (the handler failed, or the client
        left): the upstream started ahead stops, and the reply ends here (logged,
        settled, its metrics balanced)."""
        self._ready.cancel()
        if self._task is not None:
            self._task.cancel()
        self.record.end(reason, error)

    @property
    def keeps_running(self) -> bool:
        """Whether the reply outlives its primary response."""
        return self._background or self._grace > 0

    def start(self) -> asyncio.Task[None]:
        """Start the producer task: its first step asks the upstream, before
        :meth:`set_up` (one task a reply, from its first request to its end)."""
        self._task = asyncio.create_task(self._produce())
        return self._task

    def run(self) -> asyncio.Future[web.StreamResponse]:
        """Produce, serving the primary: the handler returns what this resolves to,
        and it raises :class:`GatewayError` only before headers.

        A future, not a coroutine: nothing more for an open stream to hold than the
        handler's frame. Not shielded: a handler cancelled (the client left, or the
        loop is closing) cancels it, which nothing else awaits (see ``_handler_done``).
        """
        assert self.primary is not None
        return self._primary_done

    def cancel(self) -> None:
        """Stop the reply (``POST .../cancel``): readers get one ``cancelled`` error."""
        self._cancel_with(ReplyCancelled("The reply was cancelled."))

    # The producer task.

    async def _produce(self) -> None:
        # The task's only frame above the relay loop: every token resumes each frame
        # between the task and the upstream's reader (about 0.5 % CPU per token each).
        task = asyncio.current_task()
        assert task is not None
        try:
            outcome: Exception | None = None
            try:
                opened = await self._open()
                try:
                    await self._relay(opened)
                except ProviderError as exc:
                    raise from_provider_error(exc) from None
                finally:
                    await close_events(opened.events)
            except asyncio.CancelledError:
                if self._ready.cancelled():
                    raise  # abandoned before its set-up: the handler ended the reply
                if self.record.shutting_down:
                    self._cut = shutdown_error()
                if self._cut is None:
                    raise
                task.uncancel()
                outcome = self._cut
            except Exception as exc:
                outcome = exc
            self.watchdog.disarm()
            await self._finish(outcome)
        except asyncio.CancelledError:  # the loop is closing, or abandoned
            self.record.end(self._cancel_reason())
            raise
        finally:
            self.watchdog.stop()
            if self._grace_timer is not None:
                self._grace_timer.cancel()
            self._release_primary(None)
            if self._tracking is not None:
                self._tracking.__exit__(None, None, None)

    async def _finish(self, outcome: Exception | None) -> None:
        record = self.record
        if outcome is None:
            record.end_ok()
        elif isinstance(outcome, GatewayError):
            record.end(end_reason(outcome), outcome)
            await self._send_error(outcome)
        elif isinstance(outcome, ClientGone):
            record.end("client_gone")
        elif isinstance(outcome, SendTimeout):
            record.end("send_timeout")
            self._abort_primary()
        else:
            log.error("stream_failed", exc_info=outcome)
            error = GatewayError("The gateway failed while streaming.")
            record.end("internal_error", error)
            await self._send_error(error)

    def _on_cut(self, reason: Exception) -> None:
        """The watchdog's verdict: an idle upstream ends the reply, a slow primary may not."""
        if isinstance(reason, SendTimeout) and self.keeps_running:
            self._abort_primary()
            self._primary_left(reason)
            return
        self._cancel_with(reason)

    def _cancel_with(self, reason: Exception) -> None:
        # After ``set_up``: the task is past its first step (``start`` came first,
        # and the handler yielded twice), so its own handling ends the reply.
        if self._cut is None and self._task is not None and not self._task.done():
            self._cut = reason
            self._task.cancel()

    def _cancel_reason(self) -> str:
        transport = self._http_request.transport if self._http_request else None
        if transport is None or transport.is_closing():
            return "client_gone"
        return "shutdown"

    # The primary response.

    def _primary_left(self, reason: Exception) -> None:
        """The primary is gone: end the reply, or let it run (background, grace)."""
        if self.primary is None:
            return
        if not self.keeps_running:
            self._cancel_with(reason)
            return
        self._release_primary(None)
        if not self._background:
            self._grace_timer = asyncio.get_running_loop().call_later(self._grace, self._grace_over)

    def _grace_over(self) -> None:
        if self.reply_log.attached():
            loop = asyncio.get_running_loop()
            self._grace_timer = loop.call_later(self._grace, self._grace_over)
            return
        self._cancel_with(ClientGone())

    def _lost(self, exc: ClientGone | SendTimeout) -> None:
        """A write to the primary failed: raises unless the reply outlives it."""
        if not self.keeps_running:
            raise exc
        if isinstance(exc, SendTimeout):
            self._abort_primary()
        self._primary_left(exc)

    def _release_primary(self, outcome: GatewayError | None) -> None:
        self.primary = None
        self.watchdog.detach()
        done = self._primary_done
        if done.done():
            return
        if outcome is not None:
            done.set_exception(outcome)
        elif self._response is not None:
            done.set_result(self._response)
        else:
            done.cancel()  # no primary (a background reply): nobody awaits it

    def _handler_done(self, done: asyncio.Future[web.StreamResponse]) -> None:
        if done.cancelled() and self.primary is not None:
            self._primary_left(ClientGone())

    def _abort_primary(self) -> None:
        transport = self._http_request.transport if self._http_request else None
        if transport is not None:
            transport.abort()

    async def _send_error(self, exc: GatewayError) -> None:
        primary = self.primary
        if primary is None:
            return
        if not primary.opened:
            self._release_primary(exc)  # answered as JSON by the handler
            return
        try:
            await primary.send(self.sequencer.number(self.encoder.error(exc)))
        except (ClientGone, SendTimeout):
            return
        await primary.close()

    def _log_end(self, record: ReplyRecord) -> None:
        """The record's observer: the log's last entry."""
        if record.reason in ("stop", "length"):
            self.reply_log.append(Ended(usage=record.usage_counts()))
            return
        error = record.error or GatewayError(
            f"The reply ended early ({record.reason}).", code=record.reason
        )
        self.reply_log.append(Ended(error=error.body()["error"]))

    async def _open(self) -> Opened:
        """Start the upstream (retries, fallbacks), then wait for the set-up and an
        admission still in flight: nothing goes out before either."""
        record = self.record
        try:
            # Here, not in ``ReplyRecord.open``: a frame less while the upstream works.
            opened = await open_stream(
                record.routes,
                record.build_request,
                record.on_attempt,
                deadline=self.watchdog,
                on_accepted=self._accepted,
            )
        except BaseException as exc:
            await self._ready  # abandoned meanwhile: cancelled, and the handler ended it
            if record.admission is not None and isinstance(exc, Exception):
                await _refusal_first(record.admission)
            if isinstance(exc, ProviderError):
                raise from_provider_error(exc) from None
            raise
        try:
            await self._ready
            record.opened(opened)
            admission = record.admission
            if admission is not None:
                # Reserved while the upstream started: a refusal is the response
                # (429/503), as if it came first.
                # Not shielded: the answer is a future of its own, and cancelling it
                # leaves the admission's task to run to its end (and settle). Its
                # headers go out with the stream's (``EventStream``'s late headers).
                await admission
                record.admission = None
        except BaseException:
            await close_events(opened.events)
            raise
        return opened

    async def _accepted(self) -> None:
        """An upstream accepted the request: with ``open_on_accept``, the primary
        opens now (once set up, and admitted), so its first token goes out alone.
        A refusal still in flight is the response; a later failure is in-band."""
        if self._opened:
            return  # a retry's or a fallback's upstream: already open
        await self._ready
        if not self._open_on_accept or self.primary is None:
            return
        record = self.record
        admission = record.admission
        if admission is not None:
            await admission  # raises the refusal: answered with its status
            record.admission = None
        await self._open_primary(hold=False)

    async def _open_primary(self, *, hold: bool) -> bytes | None:
        """Start the reply's frames and open the primary (once): its opening frames
        go now, or, with ``hold``, are returned to leave with the first token (the
        status line, the headers, the opening and the token in one write)."""
        self._opened = True
        opening = self.sequencer.start()
        primary = self.primary
        if primary is None:
            return None
        try:
            await primary.open()
            if hold:
                return opening
            await primary.send(opening)
        except (ClientGone, SendTimeout) as exc:
            self._lost(exc)
        return None

    # Everything per token happens in the relay.

    async def _relay(self, opened: Opened) -> None:
        record = self.record
        encoder = self.encoder
        watchdog = self.watchdog
        number = self.sequencer.number
        one = self.sequencer.one
        append = self.reply_log.append
        loop = asyncio.get_running_loop()
        # The idle timer starts with the first event.
        watchdog.last_event = loop.time()
        watchdog.idle = opened.route.config.timeouts.idle
        watchdog.arm()
        event = opened.first
        # The opening frames leave with a first token (TTFT: one system call, not two),
        # unless they left when the upstream accepted (``_accepted``). None once sent:
        # what follows is written without a coroutine (``write``).
        head = None if self._opened else await self._open_primary(hold=type(event) is TextDelta)

        events = opened.events
        texts = record.texts
        text_frame = encoder.text
        apply = record.apply
        meter = record.meter
        while True:
            primary = self.primary
            if type(event) is TextDelta:
                text = event.text
                append(event)
                if not texts:
                    record.first_token_at = time.perf_counter()
                texts.append(text)
                if primary is not None:
                    # No local for the frame: it would be held while the next token waits.
                    try:
                        if head is not None:
                            await primary.send(head + one(text_frame(text)))
                            head = None
                        elif primary.write(one(text_frame(text))):  # after the first: no
                            await primary.drain()  # coroutine per token, unless a backlog
                    except (ClientGone, SendTimeout) as exc:
                        self._lost(exc)
                if meter is not None and len(texts) >= meter.next_debit:
                    await meter.debit(len(texts))
            elif type(event) is Usage or type(event) is TokenCount:
                apply(event)  # counts: they come with the end
            else:
                apply(event)
                append(event)  # type: ignore[arg-type]  # no counts: handled above
                frame = _frame_of(encoder, event)
                if frame and primary is not None:
                    try:
                        await primary.send(number(frame))
                    except (ClientGone, SendTimeout) as exc:
                        self._lost(exc)
            try:
                event = await anext(events)
            except StopAsyncIteration:
                break
            watchdog.last_event = loop.time()
        record.check_complete()
        await record.count_prompt()  # a large prompt is counted off the loop
        primary = self.primary
        if primary is not None:
            try:
                await primary.send(number(encoder.end(record.usage_counts)))
            except (ClientGone, SendTimeout) as exc:
                self._lost(exc)
                return
            await primary.close()


async def _refusal_first(admission: asyncio.Future[dict[str, str]]) -> None:
    """The upstream failed to start while admission was in flight: its refusal
    (which would have come first) wins; otherwise the caller's error stands."""
    try:
        await admission
    except GatewayError:
        raise
    except Exception:
        return


def _frame_of(encoder: Encoder, event: StreamEvent) -> bytes:
    """The frame of a non-text event (usage has none: it comes with the end)."""
    if isinstance(event, ToolCallDelta):
        return encoder.tool_call(event)
    if isinstance(event, Finish):
        return encoder.finish(event.reason, event.stop_sequence)
    return b""
