"""The routing table: model names (and aliases) to providers.

Built from settings at start-up, and again on each reload. Each distinct upstream
gets one provider instance (one HTTP client, reused), shared by every model that
names it; a reload reuses the previous registry's instance of an unchanged upstream.
This is the only place that maps a provider *kind* to a class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from config import ModelConfig, Settings, UpstreamConfig
from gateway.errors import NotFound
from providers.base import Provider
from providers.fake.provider import FakeProvider
from providers.support.tokenizer import Tokenizer

ProviderFactory = Callable[[UpstreamConfig, Tokenizer], Provider]


def _fake(upstream: UpstreamConfig, tokenizer: Tokenizer) -> Provider:
    return FakeProvider(tokenizer)


def _openai(upstream: UpstreamConfig, tokenizer: Tokenizer) -> Provider:
    from providers.openai.provider import OpenAIProvider

    return OpenAIProvider(upstream)


def _anthropic(upstream: UpstreamConfig, tokenizer: Tokenizer) -> Provider:
    from providers.anthropic.provider import AnthropicProvider

    return AnthropicProvider(upstream)


FACTORIES: dict[str, ProviderFactory] = {
    "fake": _fake,
    "openai": _openai,
    "anthropic": _anthropic,
}


@dataclass(frozen=True, slots=True)
class Route:
    """One model a request may be served by."""

    config: ModelConfig
    provider: Provider

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def provider_kind(self) -> str:
        return self.config.provider


class Registry:
    """Resolves a requested model name to its route and fallbacks."""

    def __init__(self, routes: dict[str, Route], aliases: dict[str, str]) -> None:
        self._routes = routes
        self._aliases = aliases

    @classmethod
    def from_settings(
        cls, settings: Settings, tokenizer: Tokenizer, *, reuse: Registry | None = None
    ) -> Registry:
        """The routes ``settings`` give; an upstream ``reuse`` already serves keeps its provider."""
        providers: dict[tuple[str, UpstreamConfig], Provider] = {}
        if reuse is not None:
            for route in reuse._routes.values():
                providers.setdefault((route.provider_kind, route.config.upstream()), route.provider)
        routes: dict[str, Route] = {}
        for model in settings.routable_models():
            upstream = model.upstream()
            key = (model.provider, upstream)
            if key not in providers:
                providers[key] = FACTORIES[model.provider](upstream, tokenizer)
            routes[model.name] = Route(config=model, provider=providers[key])
        return cls(routes, dict(settings.aliases))

    def models(self) -> dict[str, ModelConfig]:
        """Each model's configuration, by name (aliases not included)."""
        return {name: route.config for name, route in self._routes.items()}

    def aliases(self) -> dict[str, str]:
        """Alias to model name."""
        return dict(self._aliases)

    def names(self) -> list[str]:
        """Model ids and aliases, as listed by ``/v1/models``."""
        return [*self._routes, *self._aliases]

    def resolve(self, name: str) -> list[Route]:
        """The route for ``name`` followed by its fallbacks, in order."""
        route = self._routes.get(self._aliases.get(name, name))
        if route is None:
            raise NotFound(
                f"The model '{name}' does not exist. Available models: {', '.join(self.names())}.",
                param="model",
            )
        chain = [route]
        for fallback in route.config.fallbacks:
            target = self._routes[self._aliases.get(fallback, fallback)]
            if target not in chain:
                chain.append(target)
        return chain

    def providers(self) -> list[Provider]:
        """Each provider instance once, for closing at shutdown (or once replaced)."""
        unique: dict[int, Provider] = {}
        for route in self._routes.values():
            unique.setdefault(id(route.provider), route.provider)
        return list(unique.values())
