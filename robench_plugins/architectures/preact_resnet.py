"""PreAct-ResNet-18 (He et al. 2016, "Identity Mappings in Deep Residual Networks").

The CIFAR variant used throughout adversarial training (Rice et al. 2020, Wong et al.
2020, ...): 3x3 stride-1 stem, four stages of two pre-activation blocks (64, 128, 256,
512 channels), a final BN-ReLU, global average pooling and a linear head; about
11.17 M parameters for 10 classes.

State-dict keys follow that reference code (``conv1``, ``layer1..4.N.{bn1,conv1,bn2,
conv2,shortcut.0}``, ``bn``, ``linear``), so its checkpoints load directly; a
``module.`` prefix (DataParallel) is accepted too. Registered in timm as
``preact_resnet_18``.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from robench.api import Architecture
from robench_plugins.architectures.resnet import (
    CheckpointCompat,
    check_build_args,
    register_in_timm,
    timm_entry_kwargs,
)


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv; the projection shortcut (when the shape changes) takes
    the pre-activated input, the identity shortcut the raw one."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + skip


class PreActResNet(CheckpointCompat):
    """Pre-activation ResNet for small images; any input size (global average pooling)."""

    #: stage outputs, for defenses that work on features (robench.api.features)
    feature_layers: ClassVar[tuple[str, ...]] = ("layer1", "layer2", "layer3", "layer4")
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(
        self,
        blocks: tuple[int, int, int, int] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        check_build_args(num_classes, in_chans)
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
        in_planes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            layers = []
            for j in range(n):
                layers.append(PreActBlock(in_planes, planes, 2 if i > 0 and j == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.bn = nn.BatchNorm2d(512)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.relu(self.bn(out))
        return self.linear(torch.flatten(self.pool(out), 1))


@register_in_timm
def preact_resnet_18(
    pretrained: bool = False, *, num_classes: int = 10, in_chans: int = 3, **kwargs: Any
) -> PreActResNet:
    """PreAct-ResNet-18, CIFAR stem (robench)."""
    timm_entry_kwargs("preact_resnet_18", pretrained, kwargs)
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, in_chans=in_chans)


class PreActResNet18(Architecture):
    """``preact-resnet-18``: for any channel count and input size."""

    def build(self, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
        return preact_resnet_18(num_classes=num_classes, in_chans=input_shape[0])


__all__ = ["PreActBlock", "PreActResNet", "PreActResNet18", "preact_resnet_18"]
