"""The routing table's data: one entry per model name clients may send."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

ProviderKind = Literal["openai", "anthropic", "fake"]
UsageCount = Literal["upstream", "chunks", "tiktoken", "tokenize"]
#: The tokenize endpoints ``usage_count: tokenize`` speaks.
TokenizeApi = Literal["llama-cpp-python", "llama.cpp", "vllm"]
#: Each API's endpoint, relative to the server's root (``base_url`` without ``/v1``).
TOKENIZE_PATHS: dict[TokenizeApi, str] = {
    "llama-cpp-python": "/extras/tokenize/count",
    "llama.cpp": "/tokenize",
    "vllm": "/tokenize",
}


class Timeouts(BaseModel):
    """Seconds; enforced per attempt."""

    model_config = ConfigDict(extra="forbid")

    connect: float = Field(10.0, gt=0)
    first_token: float = Field(60.0, gt=0)
    idle: float = Field(60.0, gt=0)


class TokenizeConfig(BaseModel):
    """Where ``usage_count: tokenize`` asks the upstream's own tokenizer for a count.

    ``api`` picks the request and the default path: ``llama-cpp-python``
    (``POST /extras/tokenize/count``), ``llama.cpp`` (``llama-server``'s
    ``POST /tokenize``), ``vllm`` (``POST /tokenize``). ``url`` overrides the endpoint
    (default: the route's ``base_url`` without a trailing ``/v1``, plus the API's path).
    ``timeout`` bounds the whole count (at most half the route's idle timeout); when it
    runs out or the call fails, the reply is counted by chunks.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    api: TokenizeApi = "llama-cpp-python"
    url: str | None = None
    timeout: float = Field(1.5, gt=0, le=30)

    def resolved(self, base_url: str | None, idle: float) -> TokenizeConfig:
        """This section with its ``url`` filled in and its ``timeout`` bounded."""
        url = self.url
        if url is None:
            if base_url is None:
                raise ValueError("usage_count 'tokenize' needs base_url or tokenize.url")
            root = base_url.rstrip("/").removesuffix("/v1")
            url = root + TOKENIZE_PATHS[self.api]
        return self.model_copy(update={"url": url, "timeout": min(self.timeout, idle / 2)})


class UpstreamConfig(BaseModel):
    """What a provider needs to reach its upstream: its own typed section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str | None = None
    api_key: SecretStr | None = None
    connect_timeout: float = 10.0
    #: Extra HTTP headers sent upstream (e.g. ``anthropic-version``).
    headers: tuple[tuple[str, str], ...] = ()
    #: Count completions with the upstream's tokenizer (``url`` resolved); None: don't.
    tokenize: TokenizeConfig | None = None


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
    #: ``tiktoken`` (re-tokenise the text: for OpenAI-family models), ``tokenize`` (ask
    #: the upstream's own tokenizer, see :class:`TokenizeConfig`; ``openai`` provider
    #: only). Default: chunks, except tiktoken for the ``openai`` provider without a
    #: ``base_url``.
    usage_count: UsageCount | None = None
    #: The tokenize endpoint of ``usage_count: tokenize``.
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)

    @field_validator("api_key")
    @classmethod
    def _one_line(cls, key: SecretStr | None) -> SecretStr | None:
        # It goes into a header: a line break would split the request (and the HTTP
        # client refuses it). Often a secret file's trailing newline.
        if key is not None and any(c in key.get_secret_value() for c in "\r\n\0"):
            raise ValueError("api_key has a line break in it (a secret read with its newline?)")
        return key

    @model_validator(mode="after")
    def _tokenize_reachable(self) -> Self:
        if self.usage_count == "tokenize":
            if self.provider != "openai":
                raise ValueError("usage_count 'tokenize' is for the openai provider only")
            self.tokenize.resolved(self.base_url, self.timeouts.idle)  # raises when no URL
        return self

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
            tokenize=(
                self.tokenize.resolved(self.base_url, self.timeouts.idle)
                if self.counted_by == "tokenize"
                else None
            ),
        )
