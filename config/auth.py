"""Who may call the gateway: client API keys, their limits, and the admin key.

Data only. A key is given either in clear (``key``, usually ``${VAR}`` from the
environment) or as its SHA-256 hex digest (``key_sha256``) so the config file
need not hold the secret at all.
"""

from __future__ import annotations

import hashlib
import re

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def sha256_hex(secret: str) -> str:
    """The lowercase SHA-256 hex digest of a key as presented by a client."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class KeyConfig(BaseModel):
    """One client API key and what it may do. Every limit is unlimited when unset."""

    # Validation errors echo their input by default, clear keys included.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    # The name is the key's identity in limits, usage and logs (never the secret),
    # and becomes a Redis hash tag: braces or spaces there would break slotting.
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$")
    key: SecretStr | None = None
    key_sha256: str | None = None
    #: Model names this key may use; ``None`` means all.
    models: list[str] | None = None
    #: Requests per minute.
    rpm: int | None = Field(None, ge=1)
    #: Tokens per minute (prompt and completion).
    tpm: int | None = Field(None, ge=1)
    #: Streams open at once.
    max_streams: int | None = Field(None, ge=1)
    #: Total tokens this key may ever spend.
    budget_tokens: int | None = Field(None, ge=1)
    #: Admit this key's requests when the state store is unreachable.
    fail_open: bool = False

    @field_validator("key_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not _HEX64.fullmatch(value):
            raise ValueError("key_sha256 must be 64 hex characters (a SHA-256 digest)")
        return value.lower() if value is not None else None

    @model_validator(mode="after")
    def _exactly_one_secret(self) -> KeyConfig:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError(f"key {self.name!r}: set exactly one of 'key' or 'key_sha256'")
        if self.key is not None and not self.key.get_secret_value():
            raise ValueError(f"key {self.name!r}: 'key' is empty")
        return self

    def digest(self) -> str:
        """The key's lowercase SHA-256 hex digest, whichever way it was configured."""
        if self.key is not None:
            return sha256_hex(self.key.get_secret_value())
        assert self.key_sha256 is not None  # guaranteed by _exactly_one_secret
        return self.key_sha256


class AuthConfig(BaseModel):
    """All client keys plus the optional admin key (usage and admin endpoints)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    keys: list[KeyConfig] = Field(default_factory=list)
    admin_key: SecretStr | None = None

    @model_validator(mode="after")
    def _unique(self) -> AuthConfig:
        names: set[str] = set()
        digests: dict[str, str] = {}
        for entry in self.keys:
            if entry.name in names:
                raise ValueError(f"duplicate key name {entry.name!r}")
            names.add(entry.name)
            digest = entry.digest()
            if digest in digests:
                # Name both entries, never the secret.
                raise ValueError(
                    f"keys {digests[digest]!r} and {entry.name!r} have the same secret"
                )
            digests[digest] = entry.name
        if self.admin_key is not None:
            admin = self.admin_key.get_secret_value()
            if not admin:
                raise ValueError("admin_key is empty")
            if sha256_hex(admin) in digests:
                raise ValueError("admin_key must differ from every client key")
        return self
