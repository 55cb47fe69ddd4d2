"""Named run presets (entry-point group ``robench.presets``).

``default`` is what ``robench run`` does with no arguments: PGD adversarial training of
a small CNN on scikit-learn's digits, on the CPU, in well under 90 s. It equals
``configs/digits/default.yaml`` (a test checks this).
"""
from __future__ import annotations

from typing import Any


def default() -> dict[str, Any]:
    return {
        "seed": 0,
        "device": "auto",
        "data": {"name": "digits"},
        "arch": {"name": "smallcnn"},
        "defense": {"name": "pgd-at"},
        "attack": {"name": "pgd", "steps": 20},
        "train": {"epochs": 20, "batch_size": 64, "lr": 0.1, "schedule": "cosine"},
        "eval": {"batch_size": 512},
    }
