"""The ``tokenpipe`` command (also ``python -m gateway``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from config import ConfigFileError, Settings
from gateway import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenpipe",
        description="An OpenAI-compatible LLM token-streaming gateway.",
        epilog="Every flag has a TOKENPIPE_* environment variable (e.g. TOKENPIPE_PORT); "
        "flags win over the environment, which wins over .env and the YAML file.",
    )
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default 8080)")
    parser.add_argument("--config", type=Path, help="YAML file: models, aliases, settings")
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="default info"
    )
    parser.add_argument(
        "--log-format", choices=["auto", "json", "console"], help="default auto (JSON unless a TTY)"
    )
    parser.add_argument("--workers", type=int, help="server processes sharing the port")
    parser.add_argument(
        "--check-config",
        type=Path,
        metavar="FILE",
        help="validate a YAML config file and exit (0 when valid)",
    )
    parser.add_argument("--version", action="version", version=f"tokenpipe {__version__}")
    return parser


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        lines.append(f"  {where}: {error['msg']}")
    return "\n".join(lines)


def load_settings(overrides: dict[str, Any]) -> Settings:
    """Settings from every source; raises SystemExit(2) with a readable message."""
    try:
        return Settings(**overrides)
    except ConfigFileError as exc:
        print(f"tokenpipe: configuration error: {exc}", file=sys.stderr)
    except ValidationError as exc:
        print(f"tokenpipe: invalid configuration:\n{format_validation_error(exc)}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.check_config is not None:
        settings = load_settings({"config": args.check_config})
        names = [m.name for m in settings.routable_models()] + list(settings.aliases)
        print(f"{args.check_config}: OK ({len(names)} models: {', '.join(names)})")
        return
    overrides = {
        key: value
        for key, value in {
            "host": args.host,
            "port": args.port,
            "config": args.config,
            "log_level": args.log_level,
            "log_format": args.log_format,
            "workers": args.workers,
        }.items()
        if value is not None
    }
    settings = load_settings(overrides)

    from gateway.server.run import serve

    serve(settings)
