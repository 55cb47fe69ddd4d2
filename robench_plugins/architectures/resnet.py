"""ResNet-18, CIFAR variant (He et al. 2016): 3x3 stride-1 stem and no max-pool.

This is the ResNet-18 of the adversarial-robustness literature (about 11.17 M
parameters for 10 classes), *not* timm's ImageNet ``resnet18`` (7x7 stride-2 stem and a
max-pool, which throw away most of a 32x32 image before the first block). Both exist in
timm's registry once this module is imported: ours is ``resnet_18``.

State-dict keys follow the widely used CIFAR code (``conv1``, ``bn1``,
``layer1..4.N.{conv1,bn1,conv2,bn2,shortcut.0,shortcut.1}``, ``linear``), so published
checkpoints in that layout load directly; a ``module.`` prefix (DataParallel) is
accepted too.

This module also holds the pieces every built-in architecture shares: lenient
checkpoint loading (:class:`CheckpointCompat`) and registration in timm's model
registry (:func:`register_in_timm`).
"""
from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any, ClassVar, TypeVar

import timm.models
import torch
from torch import Tensor, nn

from robench.api import Architecture
from robench.api.errors import ConfigError

EntryFn = TypeVar("EntryFn", bound=Callable[..., nn.Module])

#: Keyword arguments that ``timm.create_model`` passes to every entrypoint.
_TIMM_FACTORY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


# ------------------------------------------------------------------ shared helpers
def adapt_checkpoint_keys(
    state_dict: MutableMapping[str, Any], prefix: str, ignored: tuple[str, ...] = ()
) -> None:
    """Rewrite, in place, the keys under ``prefix`` of a checkpoint about to be loaded.

    * When *every* key under ``prefix`` starts with ``module.`` (a model saved while
      wrapped in ``nn.DataParallel``), that ``module.`` is removed.
    * Keys under ``prefix + p`` for each ``p`` in ``ignored`` are dropped (weights that the
      reference code creates but never uses, such as TRADES' ``sub_block1``).
    """
    mine = [k for k in state_dict if k.startswith(prefix)]
    wrapped = prefix + "module."
    if mine and all(k.startswith(wrapped) for k in mine):
        for key in mine:
            state_dict[prefix + key[len(wrapped):]] = state_dict.pop(key)
    if ignored:
        drop = tuple(prefix + p for p in ignored)
        for key in [k for k in state_dict if k.startswith(drop)]:
            del state_dict[key]


class CheckpointCompat(nn.Module):
    """Mixin: ``load_state_dict`` (strict too) accepts reference checkpoints as saved.

    Applies :func:`adapt_checkpoint_keys` with :attr:`ignored_checkpoint_keys` before the
    normal loading, so it also works when the network sits inside another module (for
    instance robench's ``NormalizedClassifier``, as ``net``). The caller's dict is never
    modified: ``load_state_dict`` works on its own copy.
    """

    #: Key prefixes, relative to this module, that reference checkpoints carry but this
    #: network does not have; they are dropped on load.
    ignored_checkpoint_keys: ClassVar[tuple[str, ...]] = ()

    def _load_from_state_dict(
        self,
        state_dict: MutableMapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        adapt_checkpoint_keys(state_dict, prefix, self.ignored_checkpoint_keys)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def timm_entry_kwargs(name: str, pretrained: bool, kwargs: dict[str, Any]) -> None:
    """Check the extra keyword arguments a timm entrypoint of ours received.

    ``pretrained=True`` is refused (robench ships no weights and never downloads); the
    bookkeeping arguments ``timm.create_model`` always passes are ignored; anything else
    is a ``TypeError``, as for any constructor that does not take it.
    """
    if pretrained:
        raise ConfigError(
            f"{name} has no pretrained weights: create it with pretrained=False and load a "
            "checkpoint with model.load_state_dict(...)"
        )
    for key in _TIMM_FACTORY_KWARGS:
        kwargs.pop(key, None)
    if kwargs:
        raise TypeError(f"{name}() got unexpected keyword argument(s): {', '.join(sorted(kwargs))}")


def register_in_timm(fn: EntryFn) -> EntryFn:
    """``timm.models.register_model`` unless timm already knows the name.

    Importing a module twice (a reload, or under two package names) thus neither raises
    nor warns; the first registration stays in force.
    """
    if not timm.models.is_model(fn.__name__):
        timm.models.register_model(fn)
    return fn


def check_build_args(num_classes: int, in_chans: int) -> None:
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
    if in_chans < 1:
        raise ConfigError(f"the input needs at least one channel, got {in_chans}")


# ------------------------------------------------------------------------ ResNet-18
def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the (projected when the shape changes) input, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(CheckpointCompat):
    """ResNet with BasicBlocks for small images: 3x3 stem, four stages 64..512 wide,
    global average pooling (any input size), linear head."""

    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    #: stage outputs, for defenses that work on features (robench.api.features)
    feature_layers: ClassVar[tuple[str, ...]] = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        blocks: tuple[int, int, int, int] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        check_build_args(num_classes, in_chans)
        self.num_classes = num_classes
        self.conv1 = _conv3x3(in_chans, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        in_planes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            layers = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.pool(out), 1))


@register_in_timm
def resnet_18(
    pretrained: bool = False, *, num_classes: int = 10, in_chans: int = 3, **kwargs: Any
) -> CifarResNet:
    """CIFAR-stem ResNet-18 (robench); unlike timm's own ImageNet ``resnet18``."""
    timm_entry_kwargs("resnet_18", pretrained, kwargs)
    return CifarResNet((2, 2, 2, 2), num_classes=num_classes, in_chans=in_chans)


class ResNet18(Architecture):
    """``resnet-18``: the CIFAR ResNet-18, for any channel count and input size."""

    def build(self, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
        return resnet_18(num_classes=num_classes, in_chans=input_shape[0])


__all__ = [
    "BasicBlock",
    "CheckpointCompat",
    "CifarResNet",
    "ResNet18",
    "adapt_checkpoint_keys",
    "register_in_timm",
    "resnet_18",
]
