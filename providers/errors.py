"""Exceptions raised by providers.

Every SDK or network exception is translated into one of these *by type* at the
provider boundary (opening the stream and iterating it alike)::

    ProviderError                 the upstream could not produce (the rest of) a reply
    ├── ProviderTimeout           connect, first-token or idle timeout
    ├── ProviderRateLimited       upstream said 429; ``retry_after`` seconds if it said
    ├── ProviderAuthError         upstream rejected *our* credentials (401/403)
    ├── ProviderBadRequest        upstream rejected the request itself (400/404/422)
    │   └── InvalidOptions        the request's own options are invalid (no upstream asked)
    └── ProviderUnavailable       refused, reset, 5xx, cut mid-stream, in-band error

The gateway maps these onto its own HTTP errors (``gateway.errors``). ``retryable``
tells the gateway whether another attempt (same upstream or a fallback) may help.
"""

from __future__ import annotations

from types import TracebackType


class ProviderError(Exception):
    """Base class: the upstream could not produce (the rest of) a reply."""

    retryable: bool = True

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: The upstream's HTTP status, when there was one.
        self.status = status


class ProviderTimeout(ProviderError):
    """Connect, first-token or idle timeout."""


class ProviderRateLimited(ProviderError):
    """The upstream answered 429."""

    def __init__(
        self, message: str, *, status: int | None = 429, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class ProviderAuthError(ProviderError):
    """The upstream rejected the gateway's credentials: an operator problem."""

    retryable = False


class ProviderBadRequest(ProviderError):
    """The upstream rejected the request itself; retrying cannot help."""

    retryable = False

    def __init__(self, message: str, *, status: int | None = 400, param: str | None = None) -> None:
        super().__init__(message, status=status)
        #: The request field at fault, when known (e.g. ``fake.reply_tokens``).
        self.param = param


class InvalidOptions(ProviderBadRequest):
    """The request's own provider options (e.g. ``fake.reply_tokens``) are invalid.

    The client's error, found before any upstream was asked: not an upstream failure.
    """


class ProviderUnavailable(ProviderError):
    """Refused, reset, 5xx, a stream cut without a finish, or an in-band error."""


def redact(exc: ProviderError, secret: str | None) -> None:
    """Blank ``secret`` out of ``exc``'s message (an upstream may echo the key it got)."""
    if secret and secret in exc.message:
        exc.message = exc.message.replace(secret, "***")
        exc.args = (exc.message,)


class TranslateErrors:
    """Context manager: foreign exceptions leave a provider as :class:`ProviderError`.

    Wrap both the opening of the upstream request and the iteration of its body.
    A :class:`ProviderError` raised inside is redacted (the upstream may echo the
    key); anything else goes to :meth:`translate`, which each provider overrides to
    raise the matching :class:`ProviderError` *by type* (or return, to let it pass).
    """

    __slots__ = ("secret",)

    def __init__(self, secret: str | None) -> None:
        self.secret = secret

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        if isinstance(exc, ProviderError):
            redact(exc, self.secret)
            return
        self.translate(exc)

    def translate(self, exc: BaseException) -> None:
        """Raise the :class:`ProviderError` for ``exc``, or return to let it propagate."""

    def redacted(self, message: str) -> str:
        """``message`` with the secret blanked out."""
        return message.replace(self.secret, "***") if self.secret else message
