"""Any model of timm's registry, built from scratch: ``--arch timm/<name>``.

``timm/resnet18`` creates this plugin with ``model="resnet18"`` (``variant_param``), and
:meth:`TimmModel.build` calls ``timm.create_model(name, pretrained=False,
num_classes=..., in_chans=...)`` plus ``img_size`` (the dataset's height, or (H, W))
for the models whose constructor takes one, such as ViTs: ``timm/vit_tiny_patch16_224``
on CIFAR-10 becomes a ViT with a 2x2 grid of 16x16 patches. Models without
``img_size`` (ResNets, ConvNeXts, ...) pool globally and take any size as they are.

Weights are never downloaded, so ``hf-hub:`` names are refused; ``local-dir:`` names
(a folder with timm's ``config.json``) work. robench's own built-ins are in timm's
registry too (``wrn_34_10``, ``wrn_28_10``, ``wrn_34_20``, ``preact_resnet_18``,
``resnet_18``, ``trades_smallcnn``; ``resnet_18`` is the CIFAR-stem ResNet-18, unlike timm's
ImageNet ``resnet18``).

Unknown names raise :class:`robench.api.errors.ConfigError` with the closest timm names.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, ClassVar

import timm
import timm.models
from torch import nn

from robench.api import Architecture
from robench.api.errors import ConfigError
from robench.api.params import param

# Imported for their side effect: registering robench's built-ins in timm's registry.
from robench_plugins.architectures import preact_resnet, resnet, trades_smallcnn, wideresnet  # noqa: F401

_REMOTE_PREFIXES = ("hf-hub:", "hf_hub:")
_LOCAL_PREFIX = "local-dir:"


def _arch(name: str) -> str:
    """``vit_tiny_patch16_224.augreg_in21k`` -> ``vit_tiny_patch16_224``."""
    return timm.models.split_model_name_tag(name)[0]


def close_model_names(name: str, limit: int = 5) -> list[str]:
    """timm names that look like ``name``: spelling neighbours, then names that start
    with it, then names that contain it."""
    key = _arch(name).lower()
    close = difflib.get_close_matches(key, timm.list_models(), n=3, cutoff=0.6)
    for pattern in (f"{key}*", f"*{key}*"):
        for candidate in timm.list_models(pattern):
            if len(close) >= limit:
                return close
            if candidate not in close:
                close.append(candidate)
    return close


def resolve_model_name(model: str) -> str:
    """The name to give ``timm.create_model``, or a one-line ConfigError.

    Besides exact names, ``ResNet18`` and ``vit-tiny-patch16-224`` are accepted (robench's
    plugin names are case- and ``-``/``_``-insensitive, timm's are not).
    """
    name = model.strip()
    if not name:
        raise ConfigError(
            "the timm architecture needs a model name: use timm/<name>, e.g. --arch timm/resnet18 "
            "(python -c 'import timm; print(timm.list_models())' lists them)"
        )
    if name.lower().startswith(_REMOTE_PREFIXES):
        raise ConfigError(
            f"timm model {name!r}: Hugging Face Hub models need a download, and robench builds timm "
            "models offline with random weights; name the architecture instead, e.g. timm/resnet18"
        )
    if name.startswith(_LOCAL_PREFIX):
        return name
    for candidate in (name, name.lower(), name.lower().replace("-", "_")):
        if timm.models.is_model(_arch(candidate)):
            return candidate
    close = close_model_names(name)
    hint = (
        " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
        if close
        else f"; none of timm's {len(timm.list_models())} models is close"
    )
    raise ConfigError(f"unknown timm model {model!r}{hint}")


@dataclass(frozen=True)
class TimmParams:
    model: str = param(
        "",
        help="timm model name, e.g. resnet18 or vit_tiny_patch16_224; `--arch timm/<name>` sets it",
    )


class TimmModel(Architecture[TimmParams]):
    """``timm``: the model family of timm; pick one with ``timm/<name>``."""

    Params = TimmParams
    variant_param: ClassVar[str | None] = "model"

    def build(self, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
        p = self.params
        name = resolve_model_name(p.model)
        c, h, w = input_shape
        kwargs: dict[str, Any] = {"pretrained": False, "num_classes": num_classes, "in_chans": c}
        img_size = h if h == w else (h, w)
        try:
            try:
                return timm.create_model(name, img_size=img_size, **kwargs)
            except TypeError as exc:  # the model's constructor has no img_size
                if "img_size" not in str(exc):
                    raise
                return timm.create_model(name, **kwargs)
        except ConfigError:
            raise
        except Exception as exc:  # e.g. a window or patch size that does not divide the input
            detail = (str(exc).strip().splitlines() or [""])[0]
            raise ConfigError(
                f"timm model {name!r} cannot be built for {num_classes} classes and "
                f"{c}x{h}x{w} inputs: {type(exc).__name__}: {detail}"
            ) from exc


__all__ = ["TimmModel", "TimmParams", "close_model_names", "resolve_model_name"]
