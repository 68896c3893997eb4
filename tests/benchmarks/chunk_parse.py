"""How fast one upstream chunk becomes the gateway's events: the per-token parse.

Times, per chunk, the decoders the OpenAI provider could use on what real servers
send: ``orjson.loads`` into dicts (then read by key), ``msgspec`` untyped (the same,
another parser), and ``msgspec`` into the provider's typed ``_Chunk`` (the fields it
reads, the rest skipped unbuilt: what it uses), and that with the events made
(``_Chunks.events_of``, the whole per-chunk path). Chunks: a bare token chunk, OpenAI's
(with ``system_fingerprint``, ``service_tier``, ``obfuscation``), one with
``logprobs`` (top 5), and the usage chunk.

    .venv/bin/python -m tests.benchmarks.chunk_parse --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from collections.abc import Callable
from typing import Any

import msgspec
import orjson

from providers.openai.provider import _Chunks, _decode_chunk

_HEAD = {"id": "chatcmpl-AbCdEfGhIjKlMnOpQrStUvWxYz012", "object": "chat.completion.chunk"}
_HEAD |= {"created": 1764547200, "model": "gpt-4o-mini-2024-07-18"}
_OPENAI = {"service_tier": "default", "system_fingerprint": "fp_560af6e559"}
_TOP = [{"token": t, "logprob": -0.5, "bytes": list(t.encode())} for t in (" a", " b", " c")]


def _chunk(choice: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({**_HEAD, **extra, "choices": [choice]})


CHUNKS = {
    "token": _chunk(
        {"index": 0, "delta": {"content": " world"}, "logprobs": None, "finish_reason": None}
    ),
    "openai token": _chunk(
        {"index": 0, "delta": {"content": " world"}, "logprobs": None, "finish_reason": None},
        **_OPENAI,
        obfuscation="q8Xz",
    ),
    "logprobs": _chunk(
        {
            "index": 0,
            "delta": {"content": " world"},
            "logprobs": {
                "content": [
                    {"token": " world", "logprob": -0.1, "bytes": [32], "top_logprobs": _TOP * 2}
                ]
            },
            "finish_reason": None,
        },
        **_OPENAI,
    ),
    "usage": orjson.dumps(
        {
            **_HEAD,
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 250, "total_tokens": 262},
        }
    ),
}


def _dict_walk(parse: Callable[[bytes], Any]) -> Callable[[bytes], object]:
    """Parse into dicts, then read what the provider reads."""

    def run(data: bytes) -> object:
        obj = parse(data)
        choices = obj.get("choices")
        if choices:
            delta = choices[0].get("delta")
            return (delta.get("content"), delta.get("tool_calls"), choices[0].get("finish_reason"))
        return obj.get("usage")

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--number", type=int, default=100_000)
    args = parser.parse_args()
    chunks = _Chunks()
    ways: dict[str, Callable[[bytes], object]] = {
        "orjson dicts": _dict_walk(orjson.loads),
        "msgspec dicts": _dict_walk(msgspec.json.Decoder().decode),
        "msgspec typed (used)": _decode_chunk,
        "+ events": lambda data: chunks.events_of([data]),
    }
    print(f"us per chunk, median of {args.runs} runs of {args.number:,}")
    for name, data in CHUNKS.items():
        times = {}
        for label, way in ways.items():
            runs = timeit.repeat(lambda: way(data), number=args.number, repeat=args.runs)  # noqa: B023
            times[label] = statistics.median(runs) / args.number * 1e6
        typed = times["msgspec typed (used)"] / times["orjson dicts"]
        cells = ", ".join(f"{label} {t:.2f}" for label, t in times.items())
        print(f"{name} ({len(data)} B): {cells}; typed/orjson {typed:.2f}x")


if __name__ == "__main__":
    main()
