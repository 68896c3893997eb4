"""The aiohttp internals the server relies on, in one place.

aiohttp has no public hook for "the request headers are complete" or for choosing
the ``web.Server`` class an ``AppRunner`` builds, which the header deadline
(:mod:`gateway.server.header_deadline`) needs. These functions are the only code
that touches what aiohttp keeps private; ``tests/test_third_party_internals.py``
fails loudly when an aiohttp upgrade changes it (the dependency has an upper bound).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

__all__ = [
    "RequestHandler",
    "new_request_handler",
    "protocol_of_request_factory_call",
    "server_settings",
]


def server_settings(server: web.Server) -> dict[str, Any]:
    """The keyword settings an ``AppRunner`` gave its server (kept in ``_kwargs``)."""
    settings: dict[str, Any] = server._kwargs
    return settings


def protocol_of_request_factory_call(args: tuple[Any, ...], kw: dict[str, Any]) -> RequestHandler:
    """The connection's protocol, from the arguments of a ``request_factory`` call.

    aiohttp calls it as ``(message, payload, protocol, writer, task)`` once the
    request's headers are parsed.
    """
    protocol: RequestHandler = args[2] if len(args) > 2 else kw["protocol"]
    return protocol


def new_request_handler(server: web.Server, cls: type[RequestHandler]) -> RequestHandler:
    """What ``web.Server.__call__`` does (one protocol per connection), with ``cls``.

    ``RequestHandler`` is aiohttp's connection protocol; its ``handle_error`` (the
    answer to a malformed request), ``log_exception``, ``data_received`` and
    ``log_access`` (called once each response is written: the header deadline
    re-arms there) are overridden by :mod:`gateway.server.bad_requests`.
    """
    kwargs: dict[str, Any] = server._kwargs
    return cls(server, loop=server._loop, **kwargs)
