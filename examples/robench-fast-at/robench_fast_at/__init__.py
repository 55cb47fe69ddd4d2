"""The fast-at defense plugin for robench (entry point group robench.defenses)."""
from robench_fast_at.defense import FastAt

__all__ = ["FastAt"]
__version__ = "0.1.0"
