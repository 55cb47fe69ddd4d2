"""Named run presets (entry-point group ``robench.presets``).

``default`` is the base layer of every run: the embedded digits run and the standard
evaluation suite (clean, FGSM, PGD-20, CW-20, AutoAttack standard). A preset named
after a dataset is layered on top when that dataset is chosen.

``digits`` keeps ``robench run`` with no arguments under two minutes on a laptop CPU
(training, then the best and the last checkpoint evaluated): it evaluates with
AutoAttack's two APGD attacks instead of the full standard version, whose FAB-T and
Square add about 80 s on this data and broke no further point on the models we measured (docs/evaluation.md); ``robench eval`` runs the full suite.
``configs/digits/default.yaml`` spells out what ``robench run`` does (a test checks it).
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
        "attacks": ["fgsm", "pgd-20", "cw-20", "autoattack"],
        "eval": {"batch_size": 512},
    }


def digits() -> dict[str, Any]:
    return {
        "train": {"epochs": 20, "batch_size": 64, "lr": 0.1, "schedule": "cosine"},
        "attacks": ["fgsm", "pgd-20", "cw-20", "apgd-ce", "apgd-t"],
    }
