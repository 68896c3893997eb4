"""Tool calls for the fake provider: when to call a function, and the call's events.

The fake calls a function when the request has ``tools`` and ``tool_choice`` is
``required`` or names a function, or when the ``tool_call`` knob is set; never with
``tool_choice: none`` or right after a ``tool`` message (then it answers in text, as
a model does once it has the result). The call streams as :class:`ToolCallDelta`
events: id and name first, then the JSON arguments token by token, drawn from the
function's ``parameters`` schema (:mod:`providers.fake.json_schema`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import orjson

from providers.events import ToolCallDelta
from providers.fake.json_schema import instance
from providers.support.tokenizer import Tokenizer


def chosen_function(
    params: Mapping[str, Any], messages: list[dict[str, Any]], *, force: bool, rng: random.Random
) -> Mapping[str, Any] | None:
    """The ``function`` definition to call, or None to answer in text."""
    tools: list[Mapping[str, Any]] = [
        t["function"]
        for t in params.get("tools") or ()
        if isinstance(t, Mapping) and isinstance(t.get("function"), Mapping)
    ]
    choice = params.get("tool_choice")
    if not tools or choice == "none" or (messages and messages[-1].get("role") == "tool"):
        return None
    if isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name")
        return next((f for f in tools if f.get("name") == name), None)
    if choice == "required" or force:
        return rng.choice(tools)
    return None


def call_events(
    function: Mapping[str, Any], rng: random.Random, tokenizer: Tokenizer
) -> tuple[ToolCallDelta, ...]:
    """One tool call: its start (id, name), then its arguments in token pieces."""
    schema = function.get("parameters")
    arguments = instance(schema if isinstance(schema, Mapping) else {"type": "object"}, rng)
    text = orjson.dumps(arguments).decode()
    call_id = f"call_{rng.getrandbits(96):024x}"
    head = ToolCallDelta(0, id=call_id, name=str(function.get("name")))
    return (head, *(ToolCallDelta(0, arguments=p) for p in tokenizer.pieces(text)))
