"""Typed application state, stored under one ``web.AppKey``."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from config import Settings
from gateway.registry import Registry
from providers.tokenizer import Tokenizer


@dataclass(slots=True)
class GatewayState:
    """What handlers share; built at start-up by ``gateway.app``."""

    settings: Settings
    registry: Registry
    tokenizer: Tokenizer
    #: Streams (and non-streaming replies) in flight.
    active: int = 0
    #: Set on SIGTERM/SIGINT: new requests are refused, in-flight ones finish.
    draining: bool = False


STATE = web.AppKey("state", GatewayState)
SETTINGS = web.AppKey("settings", Settings)
