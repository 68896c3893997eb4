"""The ``tokenpipe`` command (also ``python -m gateway``).

Besides serving: ``--check-config FILE`` (every problem, one line each, with its
path; ``--connect`` also reaches each upstream and Redis) and ``--print-config``
(the effective settings and the source of each; ``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError
from yarl import URL

from config import ConfigFileError, Settings
from config.environment import unknown_env_warnings
from config.provenance import effective_settings, flatten
from gateway import __version__

#: Exit status of a configuration the gateway would refuse (argparse uses 2 too).
EXIT_INVALID = 2
#: Exit status of ``--connect`` when something could not be reached.
EXIT_UNREACHABLE = 1
CONNECT_TIMEOUT_SECONDS = 2.0


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
        help="validate a YAML config file (with the environment and flags) and exit "
        "(0 when valid); every problem is listed",
    )
    parser.add_argument(
        "--connect",
        action="store_true",
        help=f"with --check-config: also GET each upstream's /models and PING Redis "
        f"({CONNECT_TIMEOUT_SECONDS:g} s timeout); non-zero exit if one is unreachable",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings, each with its source, and exit",
    )
    parser.add_argument("--json", action="store_true", help="with --print-config: as JSON")
    parser.add_argument("--version", action="version", version=f"tokenpipe {__version__}")
    return parser


def validation_problems(exc: ValidationError) -> list[str]:
    """One ``path: message`` per error; values are never quoted."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        problems.append(f"{where}: {error['msg']}")
    return problems


def format_validation_error(exc: ValidationError) -> str:
    """One indented ``path: message`` line per error; values are never quoted."""
    return "\n".join(f"  {problem}" for problem in validation_problems(exc))


class InvalidSettings(ValueError):
    """Settings that do not load: what kind of failure, and one line per problem."""

    def __init__(self, heading: str, problems: list[str]) -> None:
        self.heading = heading
        self.problems = problems
        super().__init__(f"{heading}: {'; '.join(problems)}")


def read_settings(overrides: Mapping[str, Any]) -> Settings:
    """Settings from every source, as start-up loads them (and a reload re-loads them).

    Raises :class:`InvalidSettings` naming every problem, never a value.
    """
    try:
        return Settings(**overrides)
    except ConfigFileError as exc:
        raise InvalidSettings("configuration error", exc.problems) from None
    except ValidationError as exc:
        raise InvalidSettings("invalid configuration", validation_problems(exc)) from None


def load_settings(overrides: dict[str, Any]) -> Settings:
    """Settings from every source; raises SystemExit(2) with a readable message."""
    try:
        return read_settings(overrides)
    except InvalidSettings as exc:
        problems = "\n".join(f"  {p}" for p in exc.problems)
        print(f"tokenpipe: {exc.heading}:\n{problems}", file=sys.stderr)
    raise SystemExit(EXIT_INVALID)


def print_env_warnings() -> None:
    """Unknown ``TOKENPIPE_*`` variables: named on stderr, not fatal."""
    for warning in unknown_env_warnings():
        print(f"tokenpipe: warning: {warning}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.connect and args.check_config is None:
        parser.error("--connect needs --check-config FILE")
    if args.json and not args.print_config:
        parser.error("--json needs --print-config")
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
    print_env_warnings()
    if args.check_config is not None:
        check_config({**overrides, "config": args.check_config}, connect=args.connect)
        return
    if args.print_config:
        load_settings(overrides)  # invalid: the same message and exit status as start-up
        print_config(overrides, as_json=args.json)
        return
    settings = load_settings(overrides)

    from gateway.server.run import serve

    serve(settings, overrides)


def check_config(overrides: dict[str, Any], *, connect: bool = False) -> None:
    """``--check-config``: exits 2 when invalid, 1 when ``connect`` found something unreachable."""
    settings = load_settings(overrides)
    names = [m.name for m in settings.routable_models()] + list(settings.aliases)
    print(f"{overrides['config']}: OK ({len(names)} models: {', '.join(names)})")
    if not connect:
        return
    results = asyncio.run(probe(settings))
    for result in results:
        print(result.line())
    unreachable = [r for r in results if r.reachable is False]
    if unreachable:
        print(f"tokenpipe: {len(unreachable)} unreachable", file=sys.stderr)
        raise SystemExit(EXIT_UNREACHABLE)


def print_config(overrides: dict[str, Any], *, as_json: bool) -> None:
    """``--print-config``: aligned ``setting value source`` rows, or JSON."""
    found = effective_settings(overrides)
    if as_json:
        print(json.dumps([asdict(entry) for entry in found], indent=2))
        return
    rows = [("setting", "value", "source")]
    rows += [(name, value, e.origin) for e in found for name, value in flatten(e.name, e.value)]
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    for name, value, origin in rows:
        print(f"{name:<{width[0]}}  {value:<{width[1]}}  {origin}".rstrip())


@dataclass(frozen=True)
class ProbeResult:
    """What ``--connect`` found at one target; ``reachable`` None: not tried."""

    target: str
    reachable: bool | None
    detail: str

    def line(self) -> str:
        mark = {True: "ok", False: "FAILED", None: "skipped"}[self.reachable]
        return f"connect {mark}: {self.target}: {self.detail}"


async def probe(settings: Settings) -> list[ProbeResult]:
    """One GET ``{base_url}/models`` per distinct upstream, and a Redis PING, concurrently."""
    base_urls = sorted({m.base_url for m in settings.routable_models() if m.base_url})
    results = await asyncio.gather(*(_probe_http(url) for url in base_urls), _probe_redis(settings))
    return list(results)


async def _probe_http(base_url: str) -> ProbeResult:
    import aiohttp

    url = f"{base_url.rstrip('/')}/models"
    target = f"GET {_redact_url(url)}"
    timeout = aiohttp.ClientTimeout(total=CONNECT_TIMEOUT_SECONDS)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, allow_redirects=False) as resp,
        ):
            # Any status means the upstream answered; 401 only says no key was sent.
            return ProbeResult(target, True, f"HTTP {resp.status}")
    except TimeoutError:
        return ProbeResult(target, False, f"no answer in {CONNECT_TIMEOUT_SECONDS:g} s")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return ProbeResult(target, False, f"{type(exc).__name__}: {exc}")


async def _probe_redis(settings: Settings) -> ProbeResult:
    if not hasattr(settings, "redis_url"):
        return ProbeResult("redis", None, "this build has no redis_url setting")
    raw = settings.redis_url
    url = raw.get_secret_value() if isinstance(raw, SecretStr) else raw
    if not url:
        return ProbeResult("redis", None, "redis_url is not set")
    target = f"redis {_redact_url(str(url))}"
    try:
        redis_asyncio = importlib.import_module("redis.asyncio")  # only when configured
    except ImportError:
        return ProbeResult(target, False, "the redis package is not installed")
    client = redis_asyncio.from_url(
        str(url),
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=CONNECT_TIMEOUT_SECONDS,
    )
    try:
        await asyncio.wait_for(client.ping(), CONNECT_TIMEOUT_SECONDS)
    except Exception as exc:  # redis-py's errors are its own tree; any means unreachable
        return ProbeResult(target, False, f"{type(exc).__name__}: {exc}")
    finally:
        await client.aclose()
    return ProbeResult(target, True, "PONG")


def _redact_url(url: str) -> str:
    """The URL without its password (``redis://:secret@host``)."""
    try:
        parsed = URL(url)
    except ValueError:
        return "(unparsable URL)"
    return str(parsed.with_password("***")) if parsed.password else url
