"""Browser safety: the Host allow-list and CORS (applied by the gateway middleware).

Two attacks from an ordinary web page, and one legitimate need:

* *Drive-by use*: any page can POST ``Content-Type: text/plain`` JSON to the gateway
  (a "simple" request needs no preflight) and spend the operator's upstream key. A
  browser always sends ``Origin`` on such a request, so a request whose ``Origin`` is
  neither the gateway's own (the chat page at ``/``) nor listed in ``cors_origins``
  is refused with 403, whatever its content type. Requests without ``Origin`` (SDKs,
  curl, servers) are unaffected.
* *DNS rebinding*: a page on ``evil.example`` re-pointed at 127.0.0.1 is same-origin
  with the gateway as far as the browser knows, but its requests carry
  ``Host: evil.example``. Bound to loopback, only loopback names are accepted
  (``localhost``, ``127.0.0.1``, ``[::1]``, any port), plus ``allowed_hosts``; bound to
  another address, any Host unless ``allowed_hosts`` is set.
* *A browser app on another origin*: listed in ``cors_origins``, it gets answers to
  its preflight (``OPTIONS`` -> 204) and ``Access-Control-*`` headers on every
  response, streamed ones included (added in ``on_response_prepare``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from aiohttp import web

from config import Settings
from gateway.errors import Forbidden

#: Where a request's allowed ``Origin`` is kept, for the response headers.
CORS_ORIGIN_KEY = web.RequestKey("cors_origin", str)

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, X-Request-ID, x-api-key, Last-Event-ID"
EXPOSE_HEADERS = ", ".join(
    [
        "X-Request-ID",
        "Retry-After",
        "X-Resume-Token",
        *(
            f"x-ratelimit-{what}-{kind}"
            for what in ("limit", "remaining", "reset")
            for kind in ("requests", "tokens")
        ),
    ]
)
MAX_AGE_SECONDS = 600


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name of a ``Host`` header value, without port or IPv6 brackets, lowercased."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """Which ``Host`` names and browser origins the gateway answers."""

    #: ``None``: any host.
    hosts: frozenset[str] | None
    origins: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> OriginPolicy:
        extra = {host_name(h) for h in settings.allowed_hosts}
        hosts: frozenset[str] | None
        if "*" in extra:
            hosts = None
        elif extra or _is_loopback(settings.host):
            hosts = frozenset(LOOPBACK_NAMES | extra)
        else:
            hosts = None
        return cls(hosts, frozenset(o.rstrip("/").lower() for o in settings.cors_origins))

    def host_allowed(self, host: str | None) -> bool:
        if self.hosts is None or host is None:
            return True  # no Host at all is no browser (HTTP/1.0 tools)
        return host_name(host) in self.hosts

    def origin_listed(self, origin: str) -> bool:
        return "*" in self.origins or origin.lower() in self.origins


def _same_origin(request: web.Request, origin: str) -> bool:
    return origin.lower() == f"{request.scheme}://{request.host}".lower()


#: The policy, for the gateway middleware (``gateway.http.middleware.begin``) to apply.
ORIGIN_POLICY = web.AppKey("origin_policy", OriginPolicy)


def screen(policy: OriginPolicy, request: web.Request) -> web.StreamResponse | None:
    """Apply ``policy`` before the handler: a CORS preflight's answer, ``None`` to go
    on, or :class:`Forbidden`. A function the gateway middleware calls, not a middleware
    of its own: one coroutine frame less for every open stream to hold."""
    if not policy.host_allowed(request.headers.get("Host")):
        raise Forbidden(
            "The Host header is not one this gateway answers to (see allowed_hosts).",
            code="host_not_allowed",
        )
    origin = request.headers.get("Origin")
    if origin is None or _same_origin(request, origin):
        return None
    if not policy.origin_listed(origin):
        raise Forbidden(
            f"Requests from the origin {origin[:200]!r} are not allowed (see cors_origins).",
            code="origin_not_allowed",
        )
    request[CORS_ORIGIN_KEY] = origin
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": ALLOW_HEADERS,
                "Access-Control-Max-Age": str(MAX_AGE_SECONDS),
            },
        )
    return None


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the CORS headers of an allowed cross-origin request."""
    origin = request.get(CORS_ORIGIN_KEY)
    if origin is None:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    response.headers.add("Vary", "Origin")


def setup_origin_policy(app: web.Application, settings: Settings) -> None:
    """Set the Host/CORS policy (the gateway middleware applies it, so a refusal is an
    OpenAI error body) and install its response hook."""
    app[ORIGIN_POLICY] = policy = OriginPolicy.from_settings(settings)
    if policy.origins:
        # Only then can a request be an allowed cross-origin one (``cors_origins`` is
        # read at start-up only): without the hook, aiohttp skips the signal, a few
        # coroutines less on every response's way out (a stream's first token).
        app.on_response_prepare.append(add_cors_headers)
