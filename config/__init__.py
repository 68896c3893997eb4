"""Settings: plain data, loaded once at the edge and passed down.

``config`` imports neither ``gateway`` nor ``providers``.
"""

from config.models import ModelConfig, Timeouts, UpstreamConfig
from config.routing import BUILTIN_MODELS
from config.settings import ConfigFileError, Settings

__all__ = [
    "BUILTIN_MODELS",
    "ConfigFileError",
    "ModelConfig",
    "Settings",
    "Timeouts",
    "UpstreamConfig",
]
