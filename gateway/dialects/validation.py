"""Request validation shared by the dialects: pydantic errors -> :class:`BadRequest`.

Each dialect declares its request as a pydantic model; :func:`validate` turns the
first validation error into a 400 whose ``param`` names the field (``messages[0].role``).
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.errors import BadRequest

M = TypeVar("M", bound=BaseModel)


class OpenModel(BaseModel):
    """Strict JSON types, unknown fields kept (clients send many we pass through)."""

    model_config = ConfigDict(extra="allow", strict=True)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def param_of(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a field path, without union branch tags."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TYPE_TAGS or "[" in part or "(" in part:
            continue  # a union branch's tag, not a field
        else:
            out += f".{part}" if out else str(part)
    return out


def validate(model: type[M], body: bytes) -> M:
    """Validate a request body, raising :class:`BadRequest` naming the first bad field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        if first["type"] == "json_invalid":
            raise BadRequest(
                f"We could not parse the JSON body of your request: {first['msg']}.",
                code="invalid_json",
            ) from None
        if first["type"] == "model_type" and not first["loc"]:
            raise BadRequest("The request body must be a JSON object.", code="invalid_json")
        param = param_of(tuple(first["loc"]))
        raise BadRequest(
            f"Invalid value for '{param}': {first['msg']}.", param=param, code="invalid_value"
        ) from None
