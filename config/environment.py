"""``TOKENPIPE_*`` variables that match no setting: warnings, not errors.

An environment holds many unrelated things, and a variable meant for another
version of the gateway should not stop this one; but a typo silently ignored is
how a limit never gets applied, so each is named with the closest setting.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic_settings import BaseSettings
from pydantic_settings.sources import ENV_FILE_SENTINEL, DotEnvSettingsSource, DotenvType

from config.settings import Settings
from config.unknown_keys import closest, field_names


def unknown_env_warnings(
    environ: Mapping[str, str] | None = None,
    env_file: DotenvType | None = ENV_FILE_SENTINEL,
    settings_cls: type[BaseSettings] = Settings,
) -> list[str]:
    """One message per prefixed variable, in the environment or the .env file, no setting reads.

    ``environ`` defaults to ``os.environ``; ``env_file`` to the settings' own
    ``env_file`` (``None``: no file), as ``Settings(_env_file=...)`` takes it.
    """
    config = settings_cls.model_config
    prefix = (config.get("env_prefix") or "").upper()
    if not prefix:
        return []  # without a prefix every variable would be a candidate
    delimiter = config.get("env_nested_delimiter") or None
    known = {name.upper() for name in field_names(settings_cls)}

    def check(names: list[str], where: str) -> list[str]:
        warnings = []
        for name in sorted(names):
            upper = name.upper()
            if not upper.startswith(prefix):
                continue
            key = upper[len(prefix) :]
            if delimiter is not None:
                key = key.partition(delimiter.upper())[0]
            if key in known:
                continue
            # Compared without the prefix, which would make every name look close.
            suggestion = closest(key, known)
            hint = f"; did you mean {prefix}{suggestion}?" if suggestion else ""
            warnings.append(f"{name}{where}: unknown setting, ignored{hint}")
        return warnings

    dotenv = DotEnvSettingsSource(settings_cls, env_file=env_file)
    in_file = f" (in {_env_file_names(dotenv.env_file)})"
    return [
        *check(list(os.environ if environ is None else environ), ""),
        # The .env source has already lower-cased its names (case-insensitive settings).
        *check([str(k).upper() for k in dotenv.env_vars], in_file),
    ]


def _env_file_names(env_file: DotenvType | None) -> str:
    if isinstance(env_file, str | os.PathLike):
        return str(Path(env_file))
    return ", ".join(str(Path(p)) for p in env_file or ())
