"""Settings: plain data, loaded once at the edge and passed down.

``config`` imports neither ``gateway`` nor ``providers``.
"""

from config.models import ModelConfig, Timeouts, UpstreamConfig
from config.settings import BUILTIN_MODELS, ConfigFileError, Settings

__all__ = [
    "BUILTIN_MODELS",
    "ConfigFileError",
    "ModelConfig",
    "Settings",
    "Timeouts",
    "UpstreamConfig",
]
