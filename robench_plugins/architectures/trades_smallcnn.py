"""The small CNN of TRADES' MNIST experiments (Zhang et al. 2019, github.com/yaodongyu/TRADES).

Four unpadded 3x3 convolutions (32, 32, 64, 64 channels) with a 2x2 max-pool after the
second and the fourth, then fully connected layers 1024-200-200-10 with ReLU and
dropout 0.5 after the first. On a 28x28 image the feature map shrinks
28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4, so the first linear layer sees 64 x 4 x 4 = 1024
values; 312,202 parameters for 10 classes. Other input sizes work as long as a 1x1 map
is left (at least 14x14); the first linear layer is sized for them.

Initialisation as in the reference: Kaiming-normal conv weights, zero conv biases, and
a zero last layer, so every logit starts at 0. State-dict keys follow the reference
(``feature_extractor.conv1`` ... ``classifier.fc3``), so its published MNIST checkpoint
loads directly. This is not robench's ``smallcnn``, a padded network sized for 8x8
digits. Registered in timm as ``trades_smallcnn``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from robench.api import Architecture
from robench.api.errors import ConfigError
from robench_plugins.architectures.resnet import (
    CheckpointCompat,
    check_build_args,
    register_in_timm,
    timm_entry_kwargs,
)


def _feature_size(side: int) -> int:
    """Side of the last feature map: two (conv, conv, pool) stages without padding."""
    for _ in range(2):
        side = (side - 4) // 2
    return side


class TradesSmallCNN(CheckpointCompat):
    """TRADES' MNIST CNN; ``dropout`` is the rate after the first linear layer."""

    #: after each max-pool: the two stages' features (robench.api.features)
    feature_layers: ClassVar[tuple[str, ...]] = ("feature_extractor.maxpool1", "feature_extractor.maxpool2")

    def __init__(
        self, num_classes: int = 10, in_chans: int = 1, img_size: int | tuple[int, int] = 28, dropout: float = 0.5
    ) -> None:
        super().__init__()
        check_build_args(num_classes, in_chans)
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        fh, fw = _feature_size(h), _feature_size(w)
        if fh < 1 or fw < 1:
            raise ConfigError(f"trades-smallcnn needs inputs of at least 14x14 (four unpadded convs, two pools), got {h}x{w}")
        self.num_classes = num_classes
        self.flat = 64 * fh * fw
        self.feature_extractor = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_chans, 32, 3)),
            ("relu1", nn.ReLU(inplace=True)),
            ("conv2", nn.Conv2d(32, 32, 3)),
            ("relu2", nn.ReLU(inplace=True)),
            ("maxpool1", nn.MaxPool2d(2, 2)),
            ("conv3", nn.Conv2d(32, 64, 3)),
            ("relu3", nn.ReLU(inplace=True)),
            ("conv4", nn.Conv2d(64, 64, 3)),
            ("relu4", nn.ReLU(inplace=True)),
            ("maxpool2", nn.MaxPool2d(2, 2)),
        ]))
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(self.flat, 200)),
            ("relu1", nn.ReLU(inplace=True)),
            ("drop", nn.Dropout(dropout)),
            ("fc2", nn.Linear(200, 200)),
            ("relu2", nn.ReLU(inplace=True)),
            ("fc3", nn.Linear(200, num_classes)),
        ]))
        for m in self.feature_extractor:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        head = self.classifier.get_submodule("fc3")
        assert isinstance(head, nn.Linear) and head.bias is not None
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.feature_extractor(x), 1))


@register_in_timm
def trades_smallcnn(
    pretrained: bool = False, *, num_classes: int = 10, in_chans: int = 1,
    img_size: int | tuple[int, int] = 28, **kwargs: Any,
) -> TradesSmallCNN:
    """TRADES' MNIST small CNN (robench)."""
    timm_entry_kwargs("trades_smallcnn", pretrained, kwargs)
    return TradesSmallCNN(num_classes=num_classes, in_chans=in_chans, img_size=img_size)


class TradesSmallCNNArch(Architecture):
    """``trades-smallcnn``: TRADES' MNIST CNN, for 28x28 (or larger) inputs of any channel count."""

    def build(self, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
        c, h, w = input_shape
        return trades_smallcnn(num_classes=num_classes, in_chans=c, img_size=(h, w))


__all__ = ["TradesSmallCNN", "TradesSmallCNNArch", "trades_smallcnn"]
