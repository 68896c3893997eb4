"""The routing table's data: one entry per model name clients may send."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

ProviderKind = Literal["openai", "anthropic", "fake"]


class Timeouts(BaseModel):
    """Seconds; enforced per attempt."""

    model_config = ConfigDict(extra="forbid")

    connect: float = Field(10.0, gt=0)
    first_token: float = Field(60.0, gt=0)
    idle: float = Field(60.0, gt=0)


class UpstreamConfig(BaseModel):
    """What a provider needs to reach its upstream: its own typed section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str | None = None
    api_key: SecretStr | None = None
    connect_timeout: float = 10.0
    #: Extra HTTP headers sent upstream (e.g. ``anthropic-version``).
    headers: tuple[tuple[str, str], ...] = ()


class ModelConfig(BaseModel):
    """One routable model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    provider: ProviderKind
    base_url: str | None = None
    upstream_model: str | None = None
    api_key: SecretStr | None = None
    fallbacks: list[str] = Field(default_factory=list)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    #: Attempts on this upstream after the first, before trying fallbacks.
    retries: int = Field(2, ge=0, le=10)
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def upstream_name(self) -> str:
        """The model name sent upstream."""
        return self.upstream_model or self.name

    def upstream(self) -> UpstreamConfig:
        """The provider's own section of this entry."""
        return UpstreamConfig(
            base_url=self.base_url,
            api_key=self.api_key,
            connect_timeout=self.timeouts.connect,
        )
