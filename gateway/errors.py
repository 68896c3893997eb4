"""The gateway's exceptions, and their translation from provider errors.

::

    GatewayError                  an error the client sees, with status and OpenAI body
    ├── BadRequest                400  invalid JSON, invalid field (``param`` names it)
    ├── Unauthorized              401  missing or wrong API key
    ├── Forbidden                 403  a model the key may not use; Host or Origin not allowed
    ├── NotFound                  404  unknown model or route
    ├── MethodNotAllowed          405
    ├── PayloadTooLarge           413  body over ``max_body_bytes``
    ├── RequestTimeout            408  headers/body not read in time (slow-loris)
    ├── RateLimited               429  a key's rpm / tpm / max_streams (Retry-After)
    │   └── QuotaExceeded         429  a key's budget spent; in-band when mid-stream
    ├── LimitsUnavailable         503  the limits' store (Redis) is unreachable
    ├── ReplyLogUnavailable       503  the reply log (Redis) is unreachable for a resume
    ├── Overloaded                503  ``max_streams`` reached (Retry-After)
    │   └── ShuttingDown          503  draining; in-band when the drain time ran out
    ├── ReplyCancelled            in-band: ``POST .../{id}/cancel`` stopped the reply
    ├── ReplyLost                 in-band: the replica producing the reply stopped
    └── UpstreamError             translated from ``providers.errors.ProviderError``
        ├── UpstreamRateLimited   429  Retry-After passed on
        ├── UpstreamTimeout       504
        └── (UpstreamError)       502  failures, and upstream auth (the gateway's key)

Errors reach the client on one of two channels: before the response headers, a
JSON body with the status; after, one in-band ``data: {"error": ...}`` event that
ends the stream (see ``gateway.streaming.relay``).
"""

from __future__ import annotations

from typing import Any

from providers.errors import (
    InvalidOptions,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
)


class GatewayError(Exception):
    """An error with an HTTP status and an OpenAI-shaped body."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None
    #: Close the connection after the response (the request was not read whole).
    close_connection: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class RateLimited(GatewayError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class QuotaExceeded(RateLimited):
    type = "insufficient_quota"
    code = "insufficient_quota"


class LimitsUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "limits_unavailable"


class ReplyLogUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "reply_log_unavailable"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    close_connection = True


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Overloaded(GatewayError):
    status = 503
    type = "server_error"
    code = "overloaded"


class ShuttingDown(Overloaded):
    code = "server_shutting_down"


class ReplyCancelled(GatewayError):
    status = 499
    type = "invalid_request_error"
    code = "cancelled"


class ReplyLost(GatewayError):
    status = 502
    type = "server_error"
    code = "reply_lost"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamRateLimited(UpstreamError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


#: The largest ``Retry-After`` passed on, in seconds: an upstream (or a fake knob) may
#: say anything, a header must stay small.
MAX_RETRY_AFTER_SECONDS = 3600


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` as whole seconds in 0..:data:`MAX_RETRY_AFTER_SECONDS` (NaN: 1)."""
    if seconds != seconds:  # NaN
        return "1"
    return str(int(min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS) + 0.5))


def from_provider_error(exc: ProviderError) -> GatewayError:
    """Translate by type; the message is the provider's (it never holds secrets)."""
    if isinstance(exc, InvalidOptions):
        return BadRequest(exc.message, param=exc.param, code="invalid_value")
    if isinstance(exc, ProviderBadRequest):
        return BadRequest(exc.message, param=exc.param, code="upstream_rejected")
    if isinstance(exc, ProviderRateLimited):
        headers = {}
        if exc.retry_after is not None:
            headers["Retry-After"] = retry_after_header(exc.retry_after)
        return UpstreamRateLimited(exc.message, headers=headers)
    if isinstance(exc, ProviderTimeout):
        return UpstreamTimeout(exc.message)
    if isinstance(exc, ProviderAuthError):
        # The gateway's own credentials were refused: not the client's fault.
        return UpstreamError(exc.message, code="upstream_auth_failed")
    return UpstreamError(exc.message)
