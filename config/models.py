"""The routing table's data: one entry per model name clients may send."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

ProviderKind = Literal["openai", "anthropic", "fake"]
UsageCount = Literal["upstream", "chunks", "tiktoken"]


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
    #: After the first token, when this upstream fails or cuts the stream, ask the next
    #: fallback to *continue* the partial answer (the original messages plus an assistant
    #: message holding the text sent so far) instead of ending with an in-band error. It
    #: relies on the fallback continuing its own prefix, as OpenAI-compatible servers and
    #: the fake provider do; the client sees one stream. Default: off.
    continue_on_fallback: bool = False
    #: Attempts on this upstream after the first, before trying fallbacks.
    retries: int = Field(2, ge=0, le=10)
    options: dict[str, Any] = Field(default_factory=dict)
    #: Request fields never sent to this upstream (e.g. ``store``, ``service_tier``).
    drop_params: list[str] = Field(default_factory=list)
    #: The largest ``max_tokens`` sent upstream; also the reply size reserved against a
    #: key's tpm and budget when the client sets none.
    max_tokens_cap: int | None = Field(None, ge=1)
    #: How completion tokens are counted when the upstream reports none: ``upstream``
    #: (trust only the upstream), ``chunks`` (one per streamed text chunk: exact for
    #: llama.cpp, vLLM, Ollama, TGI, an estimate when a character spans two tokens),
    #: ``tiktoken`` (re-tokenise the text: for OpenAI-family models). Default: chunks,
    #: except tiktoken for the ``openai`` provider without a ``base_url``.
    usage_count: UsageCount | None = None

    @property
    def counted_by(self) -> UsageCount:
        """The effective :attr:`usage_count`."""
        if self.usage_count is not None:
            return self.usage_count
        if self.provider == "openai" and self.base_url is None:
            return "tiktoken"
        return "chunks"

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
