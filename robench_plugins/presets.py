"""Named run presets (entry-point group ``robench.presets``).

``default`` is the base layer of every run: the embedded digits run, the standard
evaluation suite (clean, FGSM, PGD-20, CW-20, AutoAttack standard) and the JSON-lines
epoch log in each run folder (``--logger`` adds others). A preset named
after a dataset is layered on top when that dataset is chosen.

``digits`` keeps ``robench run`` with no arguments under a minute on a 2-core laptop
CPU (docs/performance.md): 15 epochs, the fewest of those tried that keep PGD-AT above
50% PGD-20 accuracy on seeds 0, 1 and 2; only the checkpoint the record reports
evaluated (``eval.checkpoints: selected``); and AutoAttack's two APGD attacks instead
of the full standard version, whose FAB-T and Square add about 80 s on this data and
broke no further point on the models we measured (docs/evaluation.md). ``robench
eval`` runs the full suite.
``configs/digits/default.yaml`` spells out what ``robench run`` does (a test checks it).

``fashion-mnist`` and ``mnist`` train TRADES' small MNIST CNN (``trades-smallcnn``) for
10 epochs, without weight decay as TRADES does on MNIST, at a learning rate of 0.05 (a
short schedule; TRADES' 100-epoch one uses 0.01). ``configs/fashion-mnist/`` and
``configs/mnist/`` hold the full settings per defense and architecture.
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
        "loggers": ["jsonl"],
    }


def digits() -> dict[str, Any]:
    return {
        "train": {"epochs": 15, "batch_size": 64, "lr": 0.1, "schedule": "cosine"},
        "attacks": ["fgsm", "pgd-20", "cw-20", "apgd-ce", "apgd-t"],
        "eval": {"checkpoints": "selected"},
    }


def _grey_28x28() -> dict[str, Any]:
    return {
        "arch": {"name": "trades-smallcnn"},
        "train": {"epochs": 10, "batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0,
                  "schedule": "cosine"},
    }


def fashion_mnist() -> dict[str, Any]:
    return _grey_28x28()


def mnist() -> dict[str, Any]:
    return _grey_28x28()
