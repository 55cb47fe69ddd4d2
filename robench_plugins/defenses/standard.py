"""Standard (non-adversarial) training: cross-entropy on clean inputs; the baseline."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from robench.api import Defense, LossOutput
from robench.api.threat import ThreatModel


class StandardTraining(Defense):
    selection_metric = "val_clean"  # its PGD accuracy is ~0 in every epoch

    def forward_passes_per_image(self) -> float:
        return 3.0  # forward and backward

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel) -> LossOutput:
        logits = model(x)
        return LossOutput(F.cross_entropy(logits, y), logits)
