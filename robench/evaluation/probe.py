"""Every attack of the suite tried on a few points before any work starts.

An attack plugin that crashes, returns the wrong thing or leaves the threat model would
otherwise show only when the evaluation reaches it, after hours of training or of the
attacks before it. The probe runs each attack through the evaluation's own checks
(:func:`robench.evaluation.sequential.attack_still_correct`) on a handful of test points,
labelled with the model's own predictions so that every point is attacked (an
untrained model misclassifies most true labels, and attacks skip those). It leaves the
random state as it found it, so a probed run trains exactly as an unprobed one.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robench.api.contracts import Attack, TensorSplit
from robench.api.errors import PluginLoadError, RobenchError, one_line
from robench.api.threat import ThreatModel
from robench.evaluation.contract import blame, entry_method
from robench.evaluation.sequential import attack_generator, attack_still_correct

#: points per probe: enough to exercise batching, few enough to take seconds on a CPU
PROBE_POINTS = 4


def probe_suite(
    model: nn.Module,
    split: TensorSplit,
    attacks: Sequence[Attack],
    threat: ThreatModel,
    device: torch.device,
    points: int = PROBE_POINTS,
) -> None:
    """Raise the one-line error the evaluation would raise later, or an attack's own
    exception as a :class:`PluginLoadError` naming the plugin."""
    if not attacks or not len(split):
        return
    was_training = model.training
    model.eval()
    index = torch.arange(min(points, len(split)))
    x = split.images(index.to(split.x.device)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    cuda = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            for position, attack in enumerate(attacks):
                _probe(attack, model, x, y, threat, attack_generator(0, position, device))
    finally:
        model.train(was_training)


def _probe(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
           generator: torch.Generator) -> None:
    try:
        attack_still_correct(attack, model, x, y, threat, generator)
    except RobenchError:
        raise
    except Exception as exc:  # a plugin's own bug: named here, not as a traceback
        where = blame(attack, entry_method(attack)).removesuffix(" returned")
        raise PluginLoadError(
            f"{where} failed on a probe of {len(y)} points: {type(exc).__name__}: {one_line(exc)}"
        ) from exc
