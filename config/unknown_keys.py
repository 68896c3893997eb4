"""Keys a settings tree holds that its model does not know: typos an operator must hear about.

The walk follows the model's own annotations (nested models, lists and tuples of
them, dict values, ``X | None``), so a field added to any model is known at once.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import BaseModel

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class UnknownKey:
    """One key no field matches, and the closest name that would have."""

    loc: Loc
    suggestion: str | None

    @property
    def message(self) -> str:
        """What is wrong, without the path: ``unknown setting; did you mean x?``."""
        if self.suggestion is None:
            return "unknown setting"
        return f"unknown setting; did you mean {self.suggestion}?"

    def __str__(self) -> str:
        return f"{dotted(self.loc)}: {self.message}"


def dotted(loc: Loc) -> str:
    """``("models", 0, "timeouts")`` -> ``models.0.timeouts``, as pydantic's errors name paths."""
    return ".".join(str(part) for part in loc)


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate nearest to ``name`` (difflib), or None when none is near."""
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def field_names(model: type[BaseModel]) -> dict[str, str]:
    """Every key the model accepts (field names and string aliases) -> field name."""
    names: dict[str, str] = {}
    for name, field in model.model_fields.items():
        names[name] = name
        for alias in (field.alias, field.validation_alias):
            if isinstance(alias, str):
                names[alias] = name
    return names


def unknown_keys(annotation: Any, data: Any, loc: Loc = ()) -> list[UnknownKey]:
    """Keys in ``data`` that ``annotation`` (a model class, ``list[Model]``...) has no field for."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return unknown_keys(args[0], data, loc)
    if origin is Union or origin is types.UnionType:
        # The member shaped like the data: a mapping goes to a model or dict member.
        for member in args:
            if _accepts(member, data):
                return unknown_keys(member, data, loc)
        return []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model_unknown_keys(annotation, data, loc)
    if origin is not None and isinstance(data, Mapping) and _is_subclass(origin, Mapping):
        value_type = args[1] if len(args) == 2 else Any
        return [
            found
            for key, value in data.items()
            for found in unknown_keys(value_type, value, (*loc, str(key)))
        ]
    if (
        origin is not None
        and isinstance(data, Sequence)
        and not isinstance(data, str | bytes)
        and _is_subclass(origin, Sequence | set | frozenset)
    ):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            pairs: Iterable[tuple[Any, Any]] = zip(args, data, strict=False)
        else:
            pairs = ((args[0] if args else Any, item) for item in data)
        return [
            found
            for i, (item_type, item) in enumerate(pairs)
            for found in unknown_keys(item_type, item, (*loc, i))
        ]
    return []


def _model_unknown_keys(model: type[BaseModel], data: Any, loc: Loc) -> list[UnknownKey]:
    if not isinstance(data, Mapping):
        return []
    names = field_names(model)
    checked = model.model_config.get("extra") != "allow"
    found: list[UnknownKey] = []
    for key, value in data.items():
        name = names.get(str(key))
        if name is None:
            if checked:
                found.append(UnknownKey((*loc, str(key)), closest(str(key), model.model_fields)))
            continue
        found.extend(unknown_keys(model.model_fields[name].annotation, value, (*loc, str(key))))
    return found


def _accepts(member: Any, data: Any) -> bool:
    base = typing.get_origin(member) or member
    if typing.get_origin(member) is Annotated:
        return _accepts(typing.get_args(member)[0], data)
    if not isinstance(base, type):
        return False
    if isinstance(data, Mapping):
        return issubclass(base, BaseModel | Mapping)
    if isinstance(data, list | tuple):
        return issubclass(base, Sequence | set | frozenset) and not issubclass(base, str)
    return False


def _is_subclass(origin: Any, parent: Any) -> bool:
    return isinstance(origin, type) and issubclass(origin, parent)
