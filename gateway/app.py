"""The aiohttp application: routes, middlewares, start-up and shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from config import Settings
from gateway.http import health, models, replies, resume
from gateway.http.middleware import error_middleware
from gateway.http.static import setup_ui
from gateway.routing.registry import Registry
from gateway.state import STATE, GatewayState
from gateway.streaming.replylog import ReplyLogStore
from gateway.streaming.replylog_memory import MemoryReplyLogStore
from providers.support.tokenizer import Tokenizer

log = structlog.get_logger("tokenpipe.app")


async def _lifecycle(app: web.Application, settings: Settings) -> AsyncIterator[None]:
    """Build the tokenizer and providers at start-up; close the providers at shutdown."""
    tokenizer = await asyncio.to_thread(Tokenizer.load, settings.tokenizer_encoding)
    registry = Registry.from_settings(settings, tokenizer)
    reply_logs = reply_log_store(settings)
    app[STATE] = GatewayState(
        settings=settings, registry=registry, tokenizer=tokenizer, reply_logs=reply_logs
    )
    log.info("gateway_ready", models=registry.names(), tokenizer=tokenizer.name)
    yield
    await reply_logs.aclose()
    for provider in registry.providers():
        try:
            await provider.aclose()
        except Exception:
            log.exception("provider_close_failed", provider=type(provider).__name__)


def reply_log_store(settings: Settings) -> ReplyLogStore:
    """The reply log: in Redis when ``redis_url`` is set (replicas share it), else in memory."""
    if settings.redis_url:
        from gateway.streaming.replylog_redis import RedisReplyLogStore

        return RedisReplyLogStore(settings.redis_url, ttl=settings.resume_ttl_seconds)
    return MemoryReplyLogStore(ttl=settings.resume_ttl_seconds)


def create_app(settings: Settings | None = None) -> web.Application:
    """A ready-to-run application; nothing happens until it starts."""
    settings = settings or Settings()
    app = web.Application(
        middlewares=[error_middleware],
        # Enforced by ``gateway.http.body.read_body`` too, with a clearer message.
        client_max_size=settings.max_body_bytes,
    )
    app.cleanup_ctx.append(lambda app: _lifecycle(app, settings))
    app.router.add_post("/v1/chat/completions", replies.chat_completions)
    app.router.add_get("/v1/chat/completions/{reply_id}", resume.get_reply)
    app.router.add_post("/v1/chat/completions/{reply_id}/cancel", resume.cancel_reply)
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{model}", models.get_model)
    app.router.add_get("/healthz", health.healthz)
    setup_ui(app)
    return app
