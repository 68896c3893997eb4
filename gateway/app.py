"""The aiohttp application: routes, middlewares, start-up and shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import structlog
from aiohttp import web

from config import Settings
from gateway.admission.gate import Gate
from gateway.admission.keys import KeyRing
from gateway.admission.memory_store import MemoryStore
from gateway.admission.store import StateStore
from gateway.http import admin, health, models, replies, resume, resume_responses
from gateway.http.access_log import gateway_middleware
from gateway.http.expect import expect_within_limit
from gateway.http.middleware import RequestCounter
from gateway.http.origin import setup_origin_policy
from gateway.http.static import setup_ui
from gateway.observability.dashboard import Dashboard, setup_dashboard
from gateway.observability.live_stats import LiveStats
from gateway.observability.metrics import METRICS, Metrics, multiprocess_dir
from gateway.reload import RELOADER, Reloader
from gateway.routing.registry import FACTORIES, Registry
from gateway.routing.retired import close_provider
from gateway.state import STATE, GatewayState
from gateway.streaming.replylog import ReplyLogStore
from gateway.streaming.replylog_memory import MemoryReplyLogStore
from providers.support.tokenizer import Tokenizer

log = structlog.get_logger("tokenpipe.app")


def _store(settings: Settings) -> StateStore:
    if settings.redis_url:
        from gateway.admission.redis_store import RedisStore

        return RedisStore(settings.redis_url)
    return MemoryStore()


async def _lifecycle(
    app: web.Application, settings: Settings, metrics: Metrics, live: LiveStats
) -> AsyncIterator[None]:
    """Build the tokenizer, providers and admission at start-up; close them at shutdown."""
    tokenizer = await asyncio.to_thread(Tokenizer.load, settings.tokenizer_encoding)
    registry = Registry.from_settings(settings, tokenizer)
    reply_logs = reply_log_store(settings)
    gate = Gate(KeyRing(settings.auth), _store(settings))
    app[STATE] = GatewayState(
        settings=settings,
        registry=registry,
        tokenizer=tokenizer,
        gate=gate,
        metrics=metrics,
        live=live,
        reply_logs=reply_logs,
    )
    log.info("gateway_ready", models=registry.names(), tokenizer=tokenizer.name)
    yield
    state = app[STATE]
    await gate.aclose()
    await reply_logs.aclose()
    # The registry in use now: a reload may have replaced the one built above.
    for provider in state.registry.providers():
        await close_provider(provider)
    await state.retired.aclose()


def reply_log_store(settings: Settings) -> ReplyLogStore:
    """The reply log: in Redis when ``redis_url`` is set (replicas share it), else in memory."""
    if settings.redis_url:
        from gateway.streaming.replylog_redis import RedisReplyLogStore

        return RedisReplyLogStore(settings.redis_url, ttl=settings.resume_ttl_seconds)
    return MemoryReplyLogStore(ttl=settings.resume_ttl_seconds)


def create_app(
    settings: Settings | None = None, *, overrides: Mapping[str, Any] | None = None
) -> web.Application:
    """A ready-to-run application; nothing happens until it starts.

    ``overrides`` are the flags ``settings`` were loaded with: a reload
    (``SIGHUP``, ``POST /admin/reload``) loads the settings again with them. By
    default only the config file is named again.
    """
    settings = settings or Settings()
    if overrides is None:
        overrides = {"config": settings.config} if settings.config else {}
    app = web.Application(
        # Enforced by ``gateway.http.body.read_body`` too, with a clearer message.
        client_max_size=settings.max_body_bytes,
    )
    names = [m.name for m in settings.routable_models()]
    metrics = Metrics(
        models=[*names, *settings.aliases],
        routes=names,
        keys=[k.name for k in settings.auth.keys],
        providers=FACTORIES.keys(),
    )
    live = LiveStats([*names, *settings.aliases], share_dir=multiprocess_dir())
    app[METRICS] = metrics
    app[RELOADER] = Reloader(app, overrides)
    app.cleanup_ctx.append(lambda app: _lifecycle(app, settings, metrics, live))
    for path, handler in (
        ("/v1/chat/completions", replies.chat_completions),
        ("/v1/responses", replies.responses),
        ("/v1/messages", replies.messages),
    ):
        app.router.add_post(path, handler, expect_handler=expect_within_limit)
    app.router.add_get("/v1/chat/completions/{reply_id}", resume.get_reply)
    app.router.add_post("/v1/chat/completions/{reply_id}/cancel", resume.cancel_reply)
    app.router.add_get("/v1/responses/{reply_id}", resume_responses.get_response)
    app.router.add_post("/v1/responses/{reply_id}/cancel", resume_responses.cancel_response)
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{model}", models.get_model)
    app.router.add_get("/v1/usage", admin.usage)
    app.router.add_get("/metrics", admin.metrics)
    app.router.add_post("/admin/reload", admin.reload_config)
    app.router.add_get("/healthz", health.healthz)
    setup_ui(app)
    setup_dashboard(
        app,
        Dashboard(live, draining=lambda: STATE in app and app[STATE].draining),
        guard=admin.require_admin,
    )
    setup_origin_policy(app, settings)
    # Without metrics nothing counts requests: no cost per request.
    counter = RequestCounter() if settings.metrics else None
    app.middlewares.append(gateway_middleware(counter=counter))
    return app
