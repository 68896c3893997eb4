"""A model entry's ``usage_count: tokenize`` and its ``tokenize`` section."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from config import Settings
from config.models import ModelConfig, TokenizeConfig


def errors_of(**model: Any) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, models=[{"name": "a", **model}])  # type: ignore[call-arg]
    return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in caught.value.errors()]


def tokenize_of(**model: Any) -> TokenizeConfig | None:
    return ModelConfig(name="a", provider="openai", **model).upstream().tokenize


@pytest.mark.parametrize(
    ("base_url", "api", "url"),
    [
        (
            "http://127.0.0.1:8000/v1",
            "llama-cpp-python",
            "http://127.0.0.1:8000/extras/tokenize/count",
        ),
        (
            "http://127.0.0.1:8000/v1/",
            "llama-cpp-python",
            "http://127.0.0.1:8000/extras/tokenize/count",
        ),
        ("http://h:8080/v1", "llama.cpp", "http://h:8080/tokenize"),
        ("http://h/vllm/v1", "vllm", "http://h/vllm/tokenize"),
    ],
)
def test_the_endpoint_defaults_to_the_servers_root(base_url: str, api: str, url: str) -> None:
    tokenize = tokenize_of(base_url=base_url, usage_count="tokenize", tokenize={"api": api})
    assert tokenize is not None
    assert tokenize.url == url


def test_an_explicit_url_and_a_timeout_bounded_by_the_idle_timeout() -> None:
    tokenize = tokenize_of(
        usage_count="tokenize",
        tokenize={"url": "http://tok/count", "timeout": 5},
        timeouts={"idle": 4},
    )
    assert tokenize == TokenizeConfig(url="http://tok/count", timeout=2)


def test_only_tokenize_routes_give_the_provider_a_tokenizer() -> None:
    assert tokenize_of(base_url="http://h/v1") is None
    assert tokenize_of(base_url="http://h/v1", tokenize={"api": "vllm"}) is None
    assert (
        ModelConfig(
            name="a", provider="openai", usage_count="tokenize", base_url="http://h/v1"
        ).counted_by
        == "tokenize"
    )


def test_tokenize_needs_an_openai_compatible_upstream() -> None:
    assert errors_of(provider="fake", usage_count="tokenize") == [
        "models.0: Value error, usage_count 'tokenize' is for the openai provider only"
    ]
    assert errors_of(provider="openai", usage_count="tokenize") == [
        "models.0: Value error, usage_count 'tokenize' needs base_url or tokenize.url"
    ]


def test_typos_in_the_section_are_named() -> None:
    assert errors_of(provider="openai", base_url="http://h/v1", tokenize={"timout": 1}) == [
        "models.0.tokenize.timout: unknown setting; did you mean timeout?"
    ]
    [error] = errors_of(provider="openai", base_url="http://h/v1", tokenize={"api": "ollama"})
    assert error.startswith("models.0.tokenize.api: Input should be 'llama-cpp-python'")
