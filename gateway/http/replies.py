"""The reply endpoints: one handler per dialect, one path through the core.

A request is read and parsed by its dialect, admitted, routed, and then either
streamed (:class:`~gateway.streaming.relay.StreamSession`) or collected
(:func:`~gateway.streaming.collector.collect`). Nothing here knows a wire format.
A streamed or background reply gets a reply log (resumable, cancellable: see
``gateway.http.resume``) and a read token, ``X-Resume-Token``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import istr

from gateway.admission.gate import DEFAULT_RESERVE_TOKENS, Gate, Ticket
from gateway.admission.keys import Identity
from gateway.dialects.anthropic_messages import ANTHROPIC_MESSAGES
from gateway.dialects.base import Dialect
from gateway.dialects.chat_completions import CHAT_COMPLETIONS
from gateway.dialects.responses import RESPONSES
from gateway.errors import BadRequest, GatewayError, Overloaded, ShuttingDown
from gateway.http.body import read_body
from gateway.http.middleware import DIALECT_KEY, REQUEST_ID, REQUEST_ID_KEY, json_response
from gateway.http.offload import parse_body
from gateway.observability.replies import reply_observer
from gateway.state import STATE, GatewayState
from gateway.streaming.collector import collect
from gateway.streaming.record import ReplyRecord, end_reason
from gateway.streaming.relay import StreamSession
from gateway.streaming.replylog import ReplyLog, ReplyMeta, UnloggedReply, new_reply_id, new_token
from providers.support.tokenizer import is_large

log = structlog.get_logger("tokenpipe.http")

#: The per-reply read token's header (also accepted as ``?token=``).
RESUME_TOKEN = istr("X-Resume-Token")  # istr: see gateway.streaming.writer.SSE_HEADERS


async def reply(request: web.Request, dialect: Dialect) -> web.StreamResponse:
    """Serve one reply in ``dialect``, streaming or not."""
    # The routes stay in use (their providers open across a reload) until the reply
    # is tracked as in flight, or the handler ends. One function, not a second one
    # inside the ``with``: this frame lives as long as the stream (~240 bytes less).
    with request.app[STATE].holding() as held:
        request[DIALECT_KEY] = dialect
        state = request.app[STATE]
        settings = state.settings
        body = await read_body(
            request, settings.max_body_bytes, settings.request_read_timeout_seconds
        )
        parsed, inbound = await parse_body(dialect, body)  # large bodies in a thread
        identity = state.gate.identify(request.headers)
        routes = state.registry.resolve(inbound.model)
        held.extend(routes)
        state.gate.check_model(identity, inbound.model)
        structlog.contextvars.bind_contextvars(model=inbound.model, stream=inbound.stream)
        if inbound.background and not settings.resumable:
            raise BadRequest(
                "Background replies need the reply log, which this gateway has off "
                "(resumable: false).",
                param="background",
            )
        if state.draining:
            log.info("stream_finished", reason="rejected", detail="draining")
            raise ShuttingDown(
                "The gateway is shutting down; retry the request.", headers={"Retry-After": "1"}
            )
        if settings.max_streams and state.active >= settings.max_streams:
            log.info("stream_finished", reason="rejected", detail="max_streams")
            raise Overloaded(
                f"The gateway is at its limit of {settings.max_streams} concurrent streams; "
                "retry shortly.",
                headers={"Retry-After": "1"},
            )
        request_id = request[REQUEST_ID_KEY]
        record = ReplyRecord(
            request=inbound,
            routes=routes,
            request_id=request_id,
            reply_id=new_reply_id(dialect.id_prefix),
            tokenizer=state.tokenizer,
            dialect=dialect.name,
            operation=dialect.operation,
        )
        headers: dict[str, str] = {REQUEST_ID: request_id}
        #: The identity to admit while the upstream starts, when it may be.
        ahead: Identity | None = None
        #: A stream's ``x-ratelimit-*`` headers, made right before its headers go out.
        late_headers: Callable[[], dict[str, str]] | None = None
        cap = routes[0].config.max_tokens_cap
        if identity is not None:
            record.key = identity.name
            structlog.contextvars.bind_contextvars(key=identity.name)
            if inbound.stream and state.gate.admits_ahead(identity):
                ahead = identity
            else:
                ticket = await _admit(state.gate, identity, record, cap)
                if inbound.stream:
                    late_headers = ticket.take_headers
                else:
                    headers.update(ticket.take_headers())
        if settings.metrics:
            record.on_attempt = state.metrics.observe_attempt
        if not inbound.stream and not inbound.background:
            _observe(state, record)
            with state.track(record):
                return json_response(await collect(record, parsed), headers=headers)
        # The upstream first, in the reply's one task: the rest is set up while it
        # works on its first token, and the task goes on once ``set_up`` is done.
        session = StreamSession(
            record, track=state.track, heartbeat=settings.heartbeat_seconds, ticker=state.ticker
        )
        session.start()
        observed = False
        inline = ahead is not None and state.gate.instant and not is_large(inbound.messages)
        if ahead is not None and not inline:
            # In a task of its own (Redis, or a prompt counted in a thread), started
            # now: its first step (the command to Redis) runs right after the reply's
            # (the upstream request), so the round trip overlaps the upstream's.
            record.admission = _admit_ahead(state.gate, ahead, record, cap)
            # A ping before the first token opens the stream: with them, once answered.
            late_headers = functools.partial(_answered_headers, record.admission)
        try:
            # Two turns of the loop: the task runs to its upstream request, then the
            # rest is set up while the upstream (and Redis) work on their answers.
            await asyncio.sleep(0)
            _observe(state, record)  # off the path to the upstream request, too
            observed = True
            encoder = parsed.encoder(record.reply_id, record.created)
            # The parsed request (~2 KB as a model) is done with: not held across the
            # set-up's awaits, where 1,000 streams opening at once would leave it in
            # holes between their long-lived objects (a background reply answers its
            # pending body from it).
            pending = None if inbound.stream else parsed.pending(record.reply_id, record.created)
            del parsed
            if inline:
                # In process: the answer is here at once (a refusal is the response,
                # and the upstream started ahead is dropped).
                assert ahead is not None
                late_headers = _admit_now(state.gate, ahead, record, cap).take_headers
            await asyncio.sleep(0)
            # Streamed and background replies go into a reply log: resumable, cancellable.
            meta = ReplyMeta(
                reply_id=record.reply_id,
                dialect=dialect.name,
                body=body,
                created=record.created,
                token=new_token() if settings.resumable else "",
                key=record.key,
                background=inbound.background,
            )
            reply_log: ReplyLog
            if settings.resumable:
                reply_log = await state.reply_logs.create(meta)
                headers[RESUME_TOKEN] = meta.token
            else:
                reply_log = UnloggedReply(meta)  # no ids, nothing kept: not resumable
            session.set_up(
                request if inbound.stream else None,
                encoder,
                reply_log=reply_log,
                send_timeout=settings.send_timeout_seconds,
                headers=headers,
                late_headers=late_headers,
                retry_ms=settings.resume_retry_ms,
                background=inbound.background,
                detach_grace=settings.detach_grace_seconds,
                ids=settings.resumable,
                open_on_accept=settings.open_on_accept,
            )
        except BaseException as exc:  # nothing will stream it
            if not observed:
                _observe(state, record)  # cancelled at once: a reply all the same
            if isinstance(exc, GatewayError):
                session.abandon(end_reason(exc), exc)
            else:
                cancelled = isinstance(exc, asyncio.CancelledError)
                session.abandon("client_gone" if cancelled else "internal_error")
            raise
        if inbound.stream:
            # The body and the headers (the response has them) are not needed while
            # streaming: the encoder, the record and the log have what is; this frame
            # lives as long.
            del encoder, body, headers
            return await session.run()
        assert pending is not None
        return json_response(pending, headers=headers)


def _observe(state: GatewayState, record: ReplyRecord) -> None:
    """Count the reply in flight, and observe its end (the metrics, the dashboard)."""
    if state.settings.metrics:
        state.metrics.stream_started()
        state.live.stream_started()
        record.observers.append(reply_observer(state.metrics, state.live))


async def _admit(gate: Gate, identity: Identity, record: ReplyRecord, cap: int | None) -> Ticket:
    """Reserve the prompt plus the reply's maximum; the record settles it when it ends."""
    await record.count_prompt()
    prompt, wanted = _wanted(record, cap)
    return _held(await gate.admit(identity, prompt + wanted), record, prompt, wanted)


def _admit_now(gate: Gate, identity: Identity, record: ReplyRecord, cap: int | None) -> Ticket:
    """:func:`_admit` with an instant store and a small prompt: no coroutine, no task."""
    prompt, wanted = _wanted(record, cap)
    return _held(gate.admit_now(identity, prompt + wanted), record, prompt, wanted)


def _wanted(record: ReplyRecord, cap: int | None) -> tuple[int, int]:
    """The prompt's tokens, and the most the reply may add to them."""
    prompt = record.prompt_tokens()
    wanted = record.request.max_tokens or cap or DEFAULT_RESERVE_TOKENS
    if cap is not None:
        wanted = min(wanted, cap)
    return prompt, wanted


def _held(ticket: Ticket, record: ReplyRecord, prompt: int, wanted: int) -> Ticket:
    """The admitted ticket, bound to the record: its cap, its meter, its settle."""
    reservation = ticket.reservation
    if reservation is not None and reservation.reserved < prompt + wanted:
        # The budget has room for less than asked: the reply may not outgrow it.
        record.max_tokens_limit = max(1, reservation.reserved - prompt)
    if reservation is not None:
        ticket.prompt_tokens = prompt
        record.meter = ticket
    record.observers.append(ticket.settle)
    return ticket


def _admit_ahead(
    gate: Gate, identity: Identity, record: ReplyRecord, cap: int | None
) -> asyncio.Future[dict[str, str]]:
    """Admission in a task, while the upstream starts (``Gate.admits_ahead``): the
    relay waits for its answer (the response headers, or the refusal) before the
    first byte. The answer is a future of its own, resolved by the task's last
    step: the relay resumes one turn of the loop sooner than on the task's end, and
    a relay that gives up cancels the answer, never the task (a reservation made
    must be settled). Admitted after the reply already ended (it failed or the
    client left meanwhile), the reservation is settled at once."""
    answer: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()

    async def admit() -> None:
        try:
            ticket = await _admit(gate, identity, record, cap)
        except asyncio.CancelledError:
            answer.cancel()
            raise
        except BaseException as exc:
            if not answer.done():
                answer.set_exception(exc)
            return
        if record.ended_at is not None:
            ticket.settle(record)
        if not answer.done():
            answer.set_result(ticket.take_headers())

    answer.add_done_callback(_retrieved)
    # The loop holds the task while it waits (its reply's future has it as a
    # callback), and the answer is what the reply keeps.
    asyncio.ensure_future(admit())  # noqa: RUF006
    return answer


def _answered_headers(answer: asyncio.Future[dict[str, str]]) -> dict[str, str]:
    """The headers of an admission that answered by now. The relay waits for the
    answer before its first event, so only a ping sent before it finds none."""
    if answer.done() and not answer.cancelled() and answer.exception() is None:
        return answer.result()
    return {}


def _retrieved(answer: asyncio.Future[dict[str, str]]) -> None:
    # A refusal nobody awaited (the reply ended first) is not an error to report.
    if not answer.cancelled():
        answer.exception()


def handler(dialect: Dialect) -> Handler:
    """The handler of ``dialect``'s route: :func:`reply` with the dialect bound. A
    partial, not a coroutine calling it: one frame less for each open stream to hold."""
    return functools.partial(reply, dialect=dialect)


#: ``POST /v1/chat/completions``.
chat_completions = handler(CHAT_COMPLETIONS)
#: ``POST /v1/responses``.
responses = handler(RESPONSES)
#: ``POST /v1/messages`` (Anthropic's Messages API).
messages = handler(ANTHROPIC_MESSAGES)
