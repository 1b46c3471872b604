"""vlft: a registry-driven training framework for vision-language models.

Importing the package registers the built-in models, dataset builders, processors,
tasks, runners and lr schedulers (explicit imports, no ``import *``).
"""
from vlft import datasets, models, processors, runners, tasks  # noqa: F401  (registration)
from vlft.common.config import Config, ConfigError
from vlft.common.registry import registry

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "registry", "__version__"]
