"""robench: train, attack and rank adversarially robust image classifiers.

The core knows no plugin by name: defenses, architectures, datasets and attacks
arrive through Python entry points (see :mod:`robench.core.registry`).
"""
from __future__ import annotations

from importlib import metadata as _metadata

try:
    __version__: str = _metadata.version("robench")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

#: Version of the plugin contracts in :mod:`robench.api`. A plugin may declare the
#: version it was written for; the major number must match.
api_version: str = "1.4"

__all__ = ["__version__", "api_version"]
