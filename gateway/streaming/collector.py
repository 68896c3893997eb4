"""Non-streaming replies: run the provider to the end, answer the dialect's body."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.dialects.base import DialectRequest
from gateway.errors import GatewayError, UpstreamTimeout, from_provider_error
from gateway.routing.attempts import Opened, close_events
from gateway.streaming.record import ReplyRecord, shutdown_error
from providers.errors import ProviderError


async def collect(record: ReplyRecord, parsed: DialectRequest) -> dict[str, Any]:
    """A non-streaming reply: the dialect's whole answer body.

    Raises :class:`GatewayError`; a client that goes away cancels the task, which
    closes the provider's iterator.
    """
    task = asyncio.current_task()
    assert task is not None
    try:
        opened = await record.open()
        try:
            await _gather(record, opened)
        except ProviderError as exc:
            raise from_provider_error(exc) from None
        except TimeoutError:
            raise UpstreamTimeout(
                f"upstream sent nothing for {opened.route.config.timeouts.idle:g} s (idle timeout)"
            ) from None
        finally:
            await close_events(opened.events)
        await record.count_prompt()  # a large prompt is counted off the loop
        body = parsed.completion(record.completed())
    except GatewayError as exc:
        record.end_failed(exc)
        raise
    except asyncio.CancelledError:
        if not record.shutting_down:
            record.end("client_gone")
            raise
        task.uncancel()
        record.end("shutdown")
        raise shutdown_error() from None
    record.end_ok()
    return body


async def _gather(record: ReplyRecord, opened: Opened) -> None:
    idle = opened.route.config.timeouts.idle
    loop = asyncio.get_running_loop()
    event = opened.first
    apply = record.apply
    async with asyncio.timeout_at(loop.time() + idle) as deadline:
        while True:
            apply(event)
            try:
                event = await anext(opened.events)
            except StopAsyncIteration:
                break
            deadline.reschedule(loop.time() + idle)
    try:
        record.check_complete()
    except ProviderError as exc:
        raise from_provider_error(exc) from None
