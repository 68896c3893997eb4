"""Admission: ``KeyRing``, which client key a request presents and what it may do.

Only SHA-256 digests are kept, never a clear key. A presented key is hashed
and compared with ``hmac.compare_digest`` against every stored digest, with no
early exit, so timing reveals neither whether nor which key matched.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from config.auth import AuthConfig, KeyConfig, sha256_hex
from gateway.admission.store import Limits


@dataclass(frozen=True, slots=True)
class Identity:
    """A recognised client key: its name, the models it may use, its limits."""

    name: str
    #: ``None``: every model.
    models: frozenset[str] | None
    limits: Limits
    #: Admit without limits when the state store is unreachable.
    fail_open: bool = False

    def allows(self, model: str) -> bool:
        """Whether this key may call ``model``."""
        return self.models is None or model in self.models

    @classmethod
    def from_config(cls, entry: KeyConfig) -> Identity:
        """The identity a configured key grants."""
        return cls(
            name=entry.name,
            models=None if entry.models is None else frozenset(entry.models),
            limits=Limits(
                rpm=entry.rpm,
                tpm=entry.tpm,
                max_streams=entry.max_streams,
                budget_tokens=entry.budget_tokens,
            ),
            fail_open=entry.fail_open,
        )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # Works for aiohttp's case-insensitive headers and for plain dicts alike.
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key in ``Authorization: Bearer <key>`` or else ``x-api-key: <key>``."""
    authorization = _header(headers, "authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    api_key = _header(headers, "x-api-key")
    if api_key is not None and api_key.strip():
        return api_key.strip()
    return None


def _matches(digests: list[bytes], presented: str) -> int:
    """Index of the digest matching ``presented``, or -1; always compares them all."""
    candidate = sha256_hex(presented).encode()
    found = -1
    for index, digest in enumerate(digests):
        if hmac.compare_digest(candidate, digest):
            found = index
    return found


class KeyRing:
    """Client keys by digest, and the admin key."""

    def __init__(self, config: AuthConfig) -> None:
        self._digests = [entry.digest().encode() for entry in config.keys]
        self._identities = [Identity.from_config(entry) for entry in config.keys]
        self._admin = (
            []
            if config.admin_key is None
            else [sha256_hex(config.admin_key.get_secret_value()).encode()]
        )

    def __repr__(self) -> str:
        names = [identity.name for identity in self._identities]
        return f"KeyRing(keys={names!r}, admin={bool(self._admin)})"

    def __len__(self) -> int:
        return len(self._identities)

    @property
    def enabled(self) -> bool:
        """Whether any client key is configured (otherwise callers skip auth)."""
        return bool(self._identities)

    def identify(self, key: str) -> Identity | None:
        """The identity of a presented key, or ``None`` when it is not one of ours."""
        index = _matches(self._digests, key)
        return None if index < 0 else self._identities[index]

    def authenticate(self, headers: Mapping[str, str]) -> Identity | None:
        """The identity of the key a request presents, or ``None`` (absent or wrong)."""
        key = presented_key(headers)
        return None if key is None else self.identify(key)

    def is_admin(self, headers: Mapping[str, str]) -> bool:
        """Whether the request presents the admin key (``False`` when none is set)."""
        key = presented_key(headers)
        return key is not None and _matches(self._admin, key) >= 0
