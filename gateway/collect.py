"""Non-streaming replies: run the provider to the end, answer one ``chat.completion``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.attempts import Opened, close_events
from gateway.errors import GatewayError, UpstreamTimeout, from_provider_error
from gateway.reply import Reply, end_reason, shutdown_error
from gateway.schema import completion_body
from providers.errors import ProviderError, ProviderUnavailable
from providers.events import Finish, TextDelta, ToolCallDelta, Usage


async def collect(reply: Reply, inflight: dict[asyncio.Task[Any], Reply]) -> dict[str, Any]:
    """A non-streaming reply: the whole ``chat.completion`` body.

    Raises :class:`GatewayError`; a client that goes away cancels the task, which
    closes the provider's iterator.
    """
    task = asyncio.current_task()
    assert task is not None
    inflight[task] = reply
    try:
        opened = await reply.open()
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
        reply.reason = end_reason(exc)
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
        raise shutdown_error() from None
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
