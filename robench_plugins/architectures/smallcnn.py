"""A small CNN for inputs of 8x8 and up: quick on a CPU, deep enough to attack meaningfully."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from torch import nn

from robench.api import Architecture
from robench.api.params import param


@dataclass(frozen=True)
class SmallCNNParams:
    width: int = param(32, ge=1, help="channels of the first conv layer (doubled twice)")
    hidden: int = param(256, ge=1, help="units of the hidden fully connected layer")


class SmallCNN(Architecture[SmallCNNParams]):
    Params = SmallCNNParams

    def build(self, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
        p = self.params
        c, w = input_shape[0], p.width
        net = nn.Sequential(
            nn.Conv2d(c, w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * w, p.hidden), nn.ReLU(inplace=True),
            nn.Linear(p.hidden, num_classes),
        )
        cast(Any, net).feature_layers = ("1", "3", "6")  # the three conv blocks' outputs (robench.api.features)
        return net
