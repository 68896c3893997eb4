"""The admission step of a reply: who calls, may they use this model, is there room.

:class:`Gate` is built once per app from settings. For each request it finds the
caller's :class:`~gateway.admission.keys.Identity`, checks the model, reserves the
reply's tokens in the :class:`~gateway.admission.store.StateStore` and returns a
:class:`Ticket`. The ticket debits delivered tokens during a stream (so a budget
that runs out ends it), and settles exactly once when the reply record ends:
whatever the end (completion, error, disconnect, cancellation, shutdown), the key
is charged for the tokens actually sent. Refusals are :class:`GatewayError`\\ s with
OpenAI's codes and ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from gateway.admission.headers import ratelimit_headers
from gateway.admission.keys import Identity, KeyRing
from gateway.admission.store import (
    Admission,
    InstantStore,
    Reservation,
    StateStore,
    StoreUnavailable,
    UsageRecord,
)
from gateway.errors import (
    Forbidden,
    GatewayError,
    LimitsUnavailable,
    QuotaExceeded,
    RateLimited,
    Unauthorized,
)

if TYPE_CHECKING:
    from gateway.streaming.record import ReplyRecord

log = structlog.get_logger("tokenpipe.admission")

#: Debit delivered tokens this often during a stream (in tokens; and at the end).
DEBIT_EVERY_TOKENS = 16
#: The reply size reserved when neither the client nor the route sets a maximum.
DEFAULT_RESERVE_TOKENS = 4096

_LIMIT_OF_REASON = {
    "rate_limit_requests": ("requests", "rpm"),
    "rate_limit_tokens": ("tokens", "tpm"),
    "too_many_streams": ("concurrency", "max_streams"),
    "insufficient_quota": ("tokens", "budget_tokens"),
}


def _refusal(identity: Identity, admission: Admission, headers: dict[str, str]) -> GatewayError:
    reason = admission.reason
    if reason == "insufficient_quota":
        return QuotaExceeded(
            f"The key '{identity.name}' has used its token budget.", headers=headers
        )
    if reason == "too_many_streams":
        return RateLimited(
            f"The key '{identity.name}' has {identity.limits.max_streams} replies in flight, "
            "its limit; retry when one ends.",
            code="too_many_streams",
            headers=headers,
        )
    if reason == "rate_limit_tokens":
        error = RateLimited(
            f"Rate limit reached for the key '{identity.name}' on tokens per minute "
            f"(limit {identity.limits.tpm}); retry after the Retry-After delay.",
            headers=headers,
        )
        error.type = "tokens"
        return error
    return RateLimited(
        f"Rate limit reached for the key '{identity.name}' on requests per minute "
        f"(limit {identity.limits.rpm}); retry after the Retry-After delay.",
        headers=headers,
    )


def _has_room(admission: Admission, reserve_tokens: int) -> bool:
    """Admitted with room left for another request like this one (on every limit
    but ``max_streams``, which the store does not report; it is rechecked all the
    same, by the admission running beside the upstream)."""
    if not admission.admitted:
        return False
    if admission.remaining_requests is not None and admission.remaining_requests < 2:
        return False
    if admission.remaining_tokens is not None and admission.remaining_tokens < 2 * reserve_tokens:
        return False
    return admission.remaining_budget is None or admission.remaining_budget >= 2 * reserve_tokens


@dataclass(slots=True, eq=False)
class Ticket:
    """One admitted reply's reservation: debited while streaming, settled once."""

    gate: Gate
    identity: Identity
    reservation: Reservation | None
    #: What OpenAI's ``x-ratelimit-*`` headers of the response say, until taken.
    admission: Admission | None = None
    #: The prompt's tokens, charged with the first debit.
    prompt_tokens: int = 0
    debited: int = 0
    next_debit: int = DEBIT_EVERY_TOKENS
    settled: bool = False

    def take_headers(self) -> dict[str, str]:
        """The response's ``x-ratelimit-*`` headers, made when asked, once: a stream
        asks right before its headers go out, so the six strings are not held (and
        then freed, in holes between other streams' objects) while it starts."""
        admission, self.admission = self.admission, None
        return {} if admission is None else ratelimit_headers(admission)

    async def debit(self, delivered: int) -> None:
        """Charge tokens delivered so far; raises :class:`QuotaExceeded` when the
        budget ran out (the relay ends the stream with it, in-band)."""
        self.next_debit = delivered + DEBIT_EVERY_TOKENS
        reservation = self.reservation
        total = self.prompt_tokens + delivered
        if reservation is None or total <= self.debited:
            return
        tokens = total - self.debited
        self.debited = total
        budget = reservation.limits.budget_tokens
        if budget is None or total <= reservation.reserved:
            # Within the reservation the budget had room (admission made sure):
            # charge it without waiting for the answer.
            self.gate.store.debit_soon(reservation, tokens)
            return
        try:
            remaining = await self.gate.store.debit(reservation, tokens)
        except StoreUnavailable:
            return  # settled in full at the end; the stream is not cut for it
        if remaining is not None and remaining <= 0:
            raise QuotaExceeded(
                f"The key '{self.identity.name}' used its token budget during the reply."
            )

    def settle(self, record: ReplyRecord) -> None:
        """The record's observer: charge what was sent, exactly once, without waiting."""
        if self.settled:
            return
        self.settled = True
        if self.reservation is None:
            return
        completion = record.reported_completion_tokens()
        prompt = record.prompt_tokens()
        usage = UsageRecord(
            model=record.request.model, prompt_tokens=prompt, completion_tokens=completion
        )
        self.gate.store.settle_soon(self.reservation, prompt + completion, usage)


class Gate:
    """Admission for one app: its key ring and state store."""

    def __init__(self, ring: KeyRing, store: StateStore) -> None:
        self.ring = ring
        self.store = store
        #: Per key name (a closed set): whether its latest admission left room for
        #: more, so the next one may run beside the upstream's start.
        self._room: dict[str, bool] = {}
        self._instant = store if isinstance(store, InstantStore) else None

    def admits_ahead(self, identity: Identity) -> bool:
        """Whether ``identity``'s next admission may run while the upstream starts.

        Only while the key's latest admission in this process left clear room: its
        first request, and every one after a refusal or near a limit, waits for the
        answer first, so a refused key does not reach the upstream. Otherwise the
        admission overlaps the upstream's time to its first token: a Redis round
        trip in a task; the in-process store's tens of microseconds inline
        (:attr:`instant`), once the upstream started.
        """
        return self._room.get(identity.name, False)

    @property
    def enabled(self) -> bool:
        """Whether keys are configured (otherwise every caller is anonymous)."""
        return self.ring.enabled

    def identify(self, headers: Mapping[str, str]) -> Identity | None:
        """The caller's identity; ``None`` when keys are off. Raises 401."""
        if not self.ring.enabled:
            return None
        identity = self.ring.authenticate(headers)
        if identity is None:
            raise Unauthorized(
                "Incorrect or missing API key: send it as 'Authorization: Bearer <key>' "
                "or 'x-api-key: <key>'."
            )
        return identity

    def check_model(self, identity: Identity | None, model: str) -> None:
        """Raises 403 when ``identity`` may not use ``model``."""
        if identity is not None and not identity.allows(model):
            raise Forbidden(
                f"The key '{identity.name}' may not use the model '{model}'.", param="model"
            )

    def require_admin(self, headers: Mapping[str, str]) -> None:
        """Raises 401 unless the request presents the admin key."""
        if not self.ring.is_admin(headers):
            raise Unauthorized("This endpoint needs the admin key.")

    async def admit(self, identity: Identity, reserve_tokens: int) -> Ticket:
        """Reserve ``reserve_tokens`` for ``identity``; raises 429 or 503."""
        try:
            admission = await self.store.admit(identity.name, identity.limits, reserve_tokens)
        except StoreUnavailable as exc:
            if identity.fail_open:
                self._room[identity.name] = False
                log.warning("limits_unavailable_admitted", key=identity.name, error=str(exc))
                return Ticket(self, identity, None)
            self._room[identity.name] = False
            log.warning("limits_unavailable", key=identity.name, error=str(exc))
            raise LimitsUnavailable(
                "The gateway cannot check this key's limits right now; retry shortly.",
                headers={"Retry-After": "1"},
            ) from None
        return self._ticket(identity, admission, reserve_tokens)

    @property
    def instant(self) -> bool:
        """Whether the store answers at once (in process): :meth:`admit_now` works."""
        return self._instant is not None

    def admit_now(self, identity: Identity, reserve_tokens: int) -> Ticket:
        """:meth:`admit` answered at once, for an :attr:`instant` store."""
        assert self._instant is not None
        admission = self._instant.admit_now(identity.name, identity.limits, reserve_tokens)
        return self._ticket(identity, admission, reserve_tokens)

    def _ticket(self, identity: Identity, admission: Admission, reserve_tokens: int) -> Ticket:
        self._room[identity.name] = _has_room(admission, reserve_tokens)
        if not admission.admitted:
            limit = _LIMIT_OF_REASON.get(admission.reason or "", ("requests", "rpm"))
            log.info("rate_limited", key=identity.name, limit=limit[1])
            raise _refusal(identity, admission, ratelimit_headers(admission))
        return Ticket(self, identity, admission.reservation, admission)

    async def aclose(self) -> None:
        """Close the store (it sends the settles it has queued first)."""
        await self.store.aclose()
