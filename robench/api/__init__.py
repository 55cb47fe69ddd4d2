"""What a plugin author imports: the contracts and the building blocks, nothing above them.

``robench.api`` re-exports the plugin contracts (:mod:`robench.api.contracts`). Beside
them: ``params`` (typed plugin parameters), ``threat`` (the threat model), ``errors``,
``perturb`` (projections and random starts), ``features`` (penultimate features),
``loggers`` (the logger contract), ``model`` (wrappers), ``data`` (tensor splits and augmentation) and ``io`` (atomic,
locked writes). Nothing here imports the engine, the workflows or the CLI.
"""
from __future__ import annotations

from robench.api.contracts import (
    AdversarialDefense,
    Architecture,
    Attack,
    AttackOutcome,
    Dataset,
    DataSplits,
    Defense,
    LossOutput,
    Plugin,
    TensorSplit,
    ThreatModel,
)
from robench.api.loggers import EpochLog, Logger, RunStart

__all__ = [
    "AdversarialDefense",
    "Architecture",
    "Attack",
    "AttackOutcome",
    "DataSplits",
    "Dataset",
    "Defense",
    "EpochLog",
    "Logger",
    "LossOutput",
    "Plugin",
    "RunStart",
    "TensorSplit",
    "ThreatModel",
]
