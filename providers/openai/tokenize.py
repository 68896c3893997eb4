"""Counting a completion with the upstream's own tokenizer (``usage_count: tokenize``).

Local servers stream several tokens as one chunk when a character spans them (CJK,
emoji) and send no ``usage`` in streams, so neither the chunks nor tiktoken give the
model's count. Their tokenize endpoints do:

* llama-cpp-python: ``POST /extras/tokenize/count`` ``{"input"}`` -> ``{"count"}``. It
  adds the model's BOS token when the model wants one, so the count of ``""`` (asked
  once per model) is subtracted.
* llama.cpp's ``llama-server``: ``POST /tokenize`` ``{"content"}`` -> ``{"tokens"}``
  (no special tokens added by default).
* vLLM: ``POST /tokenize`` ``{"model", "prompt", "add_special_tokens": false}`` ->
  ``{"count", "tokens", ...}``.

Either answer shape is read whatever the API. The text is counted as one piece and
each tool call (its name and arguments) as another: how a model frames a call (e.g.
``<tool_call>`` tags) is not in the stream and not counted.

Fail-soft by design: the count is bounded by the configured timeout, and any failure
(timeout, refused, non-2xx, an answer that is not a count) returns ``None`` after one
``usage_tokenize_failed`` log line; the caller then counts chunks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Final

import aiohttp
import orjson
import structlog

from config.models import TokenizeConfig

log = structlog.get_logger("tokenpipe.openai")

#: A count above this is not a count.
_MAX_COUNT: Final = 1 << 40


class UpstreamTokenizer:
    """Counts text with one upstream's tokenize endpoint; see the module docstring."""

    def __init__(self, config: TokenizeConfig) -> None:
        assert config.url is not None, "resolved by ModelConfig.upstream()"
        self.url: str = config.url
        self.api = config.api
        self.timeout = config.timeout
        #: Tokens the endpoint adds to any text (BOS), by model; llama-cpp-python only.
        self._overhead: dict[str, int] = {}

    async def count(
        self,
        session: aiohttp.ClientSession,
        headers: Mapping[str, str],
        model: str,
        pieces: Sequence[str],
    ) -> int | None:
        """Tokens in ``pieces`` (each counted alone), or None when the upstream could
        not say within the timeout."""
        pieces = [piece for piece in pieces if piece]
        if not pieces:
            return 0
        try:
            async with asyncio.timeout(self.timeout):
                overhead = self._overhead.get(model)
                if overhead is None and self.api == "llama-cpp-python":
                    asked = [*pieces, ""]
                else:
                    asked = pieces
                counts = await asyncio.gather(
                    *(self._count_one(session, headers, model, text) for text in asked)
                )
        except TimeoutError:
            _failed(self.url, f"no answer in {self.timeout:g} s")
            return None
        except (aiohttp.ClientError, ValueError, OSError) as exc:
            _failed(self.url, str(exc) or type(exc).__name__)
            return None
        if len(counts) > len(pieces):
            overhead = self._overhead.setdefault(model, counts.pop())
        overhead = overhead or 0
        return sum(max(0, n - overhead) for n in counts)

    async def _count_one(
        self, session: aiohttp.ClientSession, headers: Mapping[str, str], model: str, text: str
    ) -> int:
        async with session.post(
            self.url, data=orjson.dumps(_body(self.api, model, text)), headers=headers
        ) as response:
            if response.status >= 300:
                raise ValueError(f"upstream returned {response.status}")
            body = orjson.loads(await response.read())
        return _count_of(body)


def _body(api: str, model: str, text: str) -> dict[str, Any]:
    if api == "llama.cpp":
        return {"content": text}
    if api == "vllm":
        return {"model": model, "prompt": text, "add_special_tokens": False}
    return {"model": model, "input": text}


def _count_of(body: Any) -> int:
    """The count in a tokenize answer; ``ValueError`` when there is none."""
    if isinstance(body, dict):
        count = body.get("count")
        if count is None and isinstance(body.get("tokens"), list):
            count = len(body["tokens"])
        if type(count) is int and 0 <= count < _MAX_COUNT:
            return count
    raise ValueError("the answer holds no token count")


def _failed(url: str, error: str) -> None:
    log.warning("usage_tokenize_failed", url=url, error=error, counted_by="chunks")
