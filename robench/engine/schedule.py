"""Learning-rate schedules and eps warm-up, as functions of training progress.

The learning rate is a pure function of (config, step), set before every step, so a
resumed run needs only its step count to continue the schedule exactly; there is no
scheduler object whose state could drift from the checkpoint.

``piecewise`` follows the convention of PyTorch's ``MultiStepLR`` and of the official
baselines: the rate is multiplied by ``gamma`` once each milestone's number of epochs
has been completed. TRADES' "lr / 10 at epoch 75" (1-based, in its code) is milestone
74 here: the last two of its 76 epochs run at 0.01.
"""
from __future__ import annotations

import math
from fractions import Fraction

from robench.api.errors import ConfigError
from robench.api.threat import ThreatModel
from robench.core.config import TrainConfig


def check_schedule(cfg: TrainConfig) -> None:
    """Reject inconsistent schedules before any work starts."""
    ms = list(cfg.milestones)
    if cfg.schedule == "piecewise" and not ms:
        raise ConfigError("train.milestones: the piecewise schedule needs milestones, e.g. [100, 105]")
    if cfg.schedule != "piecewise" and ms:
        raise ConfigError(f"train.milestones: only the piecewise schedule uses milestones (schedule is {cfg.schedule})")
    if ms != sorted(set(ms)) or any(m <= 0 or m >= cfg.epochs for m in ms):
        raise ConfigError(
            f"train.milestones: {ms} must be increasing epoch counts between 1 and epochs - 1 ({cfg.epochs - 1})"
        )
    if cfg.eps_warmup_epochs > cfg.epochs:
        raise ConfigError(f"train.eps_warmup_epochs: {cfg.eps_warmup_epochs} exceeds train.epochs ({cfg.epochs})")


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The rate for optimizer step ``step`` (0-based, counted over the whole run)."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "piecewise":
        done_epochs = step // steps_per_epoch
        return cfg.lr * cfg.gamma ** sum(1 for m in cfg.milestones if done_epochs >= m)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
    # onecycle: linear from 0 up to lr at `peak` of the run, then linear down to 0
    # (the triangular schedule of Wong et al.'s fast adversarial training)
    t = (step + 1) / total
    return cfg.lr * (t / cfg.peak if t <= cfg.peak else max(0.0, (1 - t) / (1 - cfg.peak)))


def warmed_threat(threat: ThreatModel, cfg: TrainConfig, step: int, steps_per_epoch: int) -> ThreatModel:
    """The training threat model at ``step``: eps grows linearly to its full value over
    ``eps_warmup_epochs`` (exact fractions, so "8/255" stays exact)."""
    ramp = cfg.eps_warmup_epochs * steps_per_epoch
    if ramp == 0 or step + 1 >= ramp:
        return threat
    return threat.scaled(Fraction(step + 1, ramp))
