"""Wide residual networks (Zagoruyko & Komodakis 2016), as used by TRADES, MART and most
adversarial-robustness papers.

Layout: a 3x3 conv stem with 16 channels; three groups of ``n = (depth - 4) / 6``
pre-activation basic blocks (BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3) of widths
``16k``, ``32k`` and ``64k`` (``k`` the widen factor; the first block of groups 2 and 3
has stride 2, and a block whose shape changes projects the *pre-activated* input with a
1x1 conv); then BN-ReLU, global average pooling (so 32x32, 64x64 or any other input
works) and a linear head. Dropout is 0 by default, as in those papers.

Sizes: ``wrn-34-10`` (about 46.16 M parameters for 10 classes), ``wrn-28-10`` (36.48 M)
and ``wrn-34-20`` (about 184 M), each also registered in timm's model registry as
``wrn_34_10``, ``wrn_28_10`` and ``wrn_34_20`` (``timm.create_model("wrn_34_10",
num_classes=10)`` once this module is imported; ``drop_rate`` sets the dropout).

Checkpoints: the state-dict keys are those of the TRADES code (``conv1``,
``block{1,2,3}.layer.N.{bn1,conv1,bn2,conv2,convShortcut}``, ``bn1``, ``fc``). The
official TRADES (and MART) checkpoints also carry ``sub_block1.*``, a copy of
``block1`` that their ``__init__`` creates and their ``forward`` never calls, and are
often saved from ``nn.DataParallel`` with a ``module.`` prefix. :class:`WideResNet`
drops the former and strips the latter while loading, so::

    net = get_registry("architecture").create("wrn-34-10").build(10, (3, 32, 32))
    net.load_state_dict(torch.load("model-wideres-epoch76.pt"))  # strict=True

works as is, also when ``net`` sits inside robench's ``NormalizedClassifier``.
:func:`convert_trades_state_dict` does the same rewriting explicitly.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench.api import Architecture
from robench.api.errors import ConfigError
from robench.api.params import param
from robench_plugins.architectures.resnet import (
    CheckpointCompat,
    adapt_checkpoint_keys,
    check_build_args,
    register_in_timm,
    timm_entry_kwargs,
)

#: Keys of the official TRADES/MART checkpoints that no forward pass uses.
TRADES_UNUSED_KEYS = ("sub_block1.",)


class WideBasicBlock(nn.Module):
    """Pre-activation basic block of a WRN."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.convShortcut: nn.Module | None = None  # camelCase: the TRADES checkpoints' key name
        if stride != 1 or in_planes != out_planes:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu1(self.bn1(x))
        skip = x if self.convShortcut is None else self.convShortcut(pre)
        out = self.relu2(self.bn2(self.conv1(pre)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return skip + self.conv2(out)


class WideGroup(nn.Module):
    """``n`` blocks of one width (the reference code's ``NetworkBlock``)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes,
                               stride if i == 0 else 1, dropout)
                for i in range(n)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(CheckpointCompat):
    """WRN-``depth``-``widen_factor``; takes normalised inputs of any size, returns logits."""

    ignored_checkpoint_keys: ClassVar[tuple[str, ...]] = TRADES_UNUSED_KEYS
    #: stage outputs, for defenses that work on features (robench.api.features)
    feature_layers: ClassVar[tuple[str, ...]] = ("block1", "block2", "block3")

    def __init__(
        self,
        depth: int = 34,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_chans: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(
                f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, ...), got {depth}"
            )
        if widen_factor < 1:
            raise ConfigError(f"WideResNet widen_factor must be at least 1, got {widen_factor}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"WideResNet dropout must be in [0, 1), got {dropout}")
        check_build_args(num_classes, in_chans)
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.depth, self.widen_factor, self.num_classes = depth, widen_factor, num_classes
        self.num_features = widths[3]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = WideGroup(n, widths[0], widths[1], 1, dropout)
        self.block2 = WideGroup(n, widths[1], widths[2], 2, dropout)
        self.block3 = WideGroup(n, widths[2], widths[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # As in the reference code: He-normal convs (fan-out), BN at identity, zero fc bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(torch.flatten(self.pool(out), 1))


def convert_trades_state_dict(state_dict: Mapping[str, Any]) -> OrderedDict[str, Any]:
    """A copy of a TRADES/MART WRN checkpoint without ``sub_block1.*`` and ``module.``.

    ``WideResNet.load_state_dict`` does this by itself; this is for code that loads the
    weights some other way.
    """
    out: OrderedDict[str, Any] = OrderedDict(state_dict)
    adapt_checkpoint_keys(out, "", TRADES_UNUSED_KEYS)
    return out


# -------------------------------------------------------------------- timm entrypoints
@register_in_timm
def wrn_34_10(
    pretrained: bool = False,
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    **kwargs: Any,
) -> WideResNet:
    """WRN-34-10, TRADES layout (robench)."""
    timm_entry_kwargs("wrn_34_10", pretrained, kwargs)
    return WideResNet(34, 10, num_classes=num_classes, in_chans=in_chans, dropout=drop_rate)


@register_in_timm
def wrn_28_10(
    pretrained: bool = False,
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    **kwargs: Any,
) -> WideResNet:
    """WRN-28-10, TRADES layout (robench)."""
    timm_entry_kwargs("wrn_28_10", pretrained, kwargs)
    return WideResNet(28, 10, num_classes=num_classes, in_chans=in_chans, dropout=drop_rate)


@register_in_timm
def wrn_34_20(
    pretrained: bool = False,
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    **kwargs: Any,
) -> WideResNet:
    """WRN-34-20, TRADES layout (robench)."""
    timm_entry_kwargs("wrn_34_20", pretrained, kwargs)
    return WideResNet(34, 20, num_classes=num_classes, in_chans=in_chans, dropout=drop_rate)


# ------------------------------------------------------------------ robench plugins
@dataclass(frozen=True)
class WideResNetParams:
    dropout: float = param(
        0.0, ge=0.0, lt=1.0, help="dropout between the two convs of each block (0 in TRADES and MART)"
    )


class WideResNetArchitecture(Architecture[WideResNetParams]):
    """Shared implementation of the ``wrn-*`` plugins; subclasses fix the size."""

    Params = WideResNetParams
    depth: ClassVar[int]
    widen_factor: ClassVar[int]

    def build(self, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
        p = self.params
        return WideResNet(
            self.depth, self.widen_factor, num_classes=num_classes, in_chans=input_shape[0],
            dropout=p.dropout,
        )


class WRN34_10(WideResNetArchitecture):
    """``wrn-34-10``: about 46.16 M parameters for 10 classes."""

    depth, widen_factor = 34, 10


class WRN28_10(WideResNetArchitecture):
    """``wrn-28-10``: about 36.48 M parameters for 10 classes."""

    depth, widen_factor = 28, 10


class WRN34_20(WideResNetArchitecture):
    """``wrn-34-20``: about 184 M parameters for 10 classes."""

    depth, widen_factor = 34, 20


__all__ = [
    "TRADES_UNUSED_KEYS",
    "WRN28_10",
    "WRN34_10",
    "WRN34_20",
    "WideBasicBlock",
    "WideGroup",
    "WideResNet",
    "WideResNetArchitecture",
    "WideResNetParams",
    "convert_trades_state_dict",
    "wrn_28_10",
    "wrn_34_10",
    "wrn_34_20",
]
