"""Start-up refusals: configurations that would be unsafe or wrong to serve.

Checked before binding, with a message that says how to proceed:

* an open relay by accident: a non-loopback address, a route holding an upstream
  credential, and no API keys (set ``auth.keys``, or ``TOKENPIPE_ALLOW_UNAUTHENTICATED=1``
  deliberately);
* limits that would not hold: ``--workers`` > 1 with keys that have limits and no
  ``redis_url`` (each worker would count alone).
"""

from __future__ import annotations

import ipaddress

from config import Settings


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refusals(settings: Settings) -> list[str]:
    """Why the gateway must not start with ``settings``; empty when it may."""
    problems: list[str] = []
    keys = settings.auth.keys
    credentialed = [m.name for m in settings.routable_models() if m.api_key is not None]
    if (
        not is_loopback(settings.host)
        and credentialed
        and not keys
        and not settings.allow_unauthenticated
    ):
        problems.append(
            f"refusing to serve {settings.host} with no API keys: the routes "
            f"{', '.join(credentialed)} hold upstream credentials that anyone who can reach "
            "the gateway could spend. Configure auth.keys, bind 127.0.0.1, or set "
            "TOKENPIPE_ALLOW_UNAUTHENTICATED=1 if this is deliberate."
        )
    limited = [
        k.name
        for k in keys
        if any(v is not None for v in (k.rpm, k.tpm, k.max_streams, k.budget_tokens))
    ]
    if settings.workers > 1 and limited and not settings.redis_url:
        problems.append(
            f"refusing to start {settings.workers} workers with per-key limits "
            f"({', '.join(limited)}) and no redis_url: each worker would count on its own, "
            "so the limits would not hold. Set redis_url (TOKENPIPE_REDIS_URL) or use one worker."
        )
    return problems
