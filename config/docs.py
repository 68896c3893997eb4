"""The README's settings table, generated from ``Settings`` so it cannot drift.

``python -m config.docs`` prints the table; ``--write`` replaces the one between
the markers in README.md (``tests/config/test_docs.py`` fails when they differ).
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from config.settings import Settings

START = "<!-- settings-table:start -->"
END = "<!-- settings-table:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"

_BOUNDS: tuple[tuple[type[Any], str, str], ...] = (
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Lt, "lt", "<"),
    (annotated_types.Le, "le", "≤"),
)


def settings_table(settings_cls: type[Settings] = Settings) -> str:
    """A markdown table: setting, environment variable, default, allowed values, description."""
    prefix = str(settings_cls.model_config.get("env_prefix", "")).upper()
    rows = [
        "| setting | environment | default | allowed | description |",
        "|---|---|---|---|---|",
    ]
    for name, field in settings_cls.model_fields.items():
        cells = [
            f"`{name}`",
            f"`{prefix}{name.upper()}`",
            _default(field),
            _allowed(field),
            # Docstrings use reST ``code``; markdown wants single backticks.
            " ".join((field.description or "").split()).replace("``", "`"),
        ]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


def replace_table(text: str, table: str) -> str:
    """``text`` with the part between the markers replaced by ``table``."""
    start, end = text.index(START) + len(START), text.index(END)
    return f"{text[:start]}\n{table}{text[end:]}"


def current_table(text: str) -> str:
    """The part of ``text`` between the markers."""
    return text[text.index(START) + len(START) : text.index(END)].lstrip("\n")


def _default(field: FieldInfo) -> str:
    value: Any = field.default
    if value is PydanticUndefined and field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    if value is None or value is PydanticUndefined:
        return "none"
    return f"`{value}`"


def _allowed(field: FieldInfo) -> str:
    if typing.get_origin(field.annotation) is Literal:
        return ", ".join(f"`{v}`" for v in typing.get_args(field.annotation))
    bounds = [
        f"{sign} {getattr(m, attr)}"
        for m in field.metadata
        for kind, attr, sign in _BOUNDS
        if isinstance(m, kind)
    ]
    return ", ".join(bounds)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m config.docs", description=__doc__)
    parser.add_argument("--write", action="store_true", help="update the table in README.md")
    parser.add_argument("--readme", type=Path, default=README, help="default: %(default)s")
    args = parser.parse_args(argv)
    table = settings_table()
    if not args.write:
        print(table, end="")
        return
    text = args.readme.read_text(encoding="utf-8")
    args.readme.write_text(replace_table(text, table), encoding="utf-8")


if __name__ == "__main__":
    main()
