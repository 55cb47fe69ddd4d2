"""Feature layers and their per-channel statistics, for defenses that work on features.

An architecture says where its stage features are by giving the network it builds a
``feature_layers`` attribute (names of its submodules, e.g. ``("block1", "block2",
"block3")`` for a WideResNet); timm models already say so through ``feature_info``.
A defense asks :func:`feature_modules` and never needs to know the architecture.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from robench.api.errors import ConfigError

#: added to variances before square roots, so constant features do not divide by zero
VAR_EPS = 1e-6


def _declared(module: nn.Module) -> list[str]:
    names = getattr(module, "feature_layers", None)
    if names:
        return [str(n) for n in names]
    info = getattr(module, "feature_info", None)  # timm: list of dicts (or FeatureInfo) with "module"
    try:
        return [str(entry["module"]) for entry in info] if info else []
    except (TypeError, KeyError):
        return []


def feature_modules(model: nn.Module, names: Sequence[str] = ()) -> list[tuple[str, nn.Module]]:
    """The modules whose outputs are the model's stage features, as (full name, module).

    ``names``: full module names or names relative to the network that declares its
    feature layers; empty: the layers that network declares.
    """
    modules = dict(model.named_modules())
    base = ""
    declared: list[str] = []
    for prefix, module in model.named_modules():
        declared = _declared(module)
        if declared:
            base = f"{prefix}." if prefix else ""
            break
    wanted = list(names) or declared
    if not wanted:
        raise ConfigError(
            "the model declares no feature layers (a `feature_layers` attribute, or timm's "
            "`feature_info`); name them, e.g. defense.layers=[net.layer1]"
        )
    found = []
    for name in wanted:
        for candidate in (name, base + name):
            if candidate in modules and candidate:
                found.append((candidate, modules[candidate]))
                break
        else:
            known = ", ".join(n for n in modules if n)[:300]
            raise ConfigError(f"layer {name!r} is not a module of the model (modules: {known})")
    return found


def feature_shapes(model: nn.Module, layers: Sequence[tuple[str, nn.Module]],
                   input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The output shape of each layer for a batch of two zero images, in eval mode with no
    gradients: BatchNorm statistics and random state are left as they were."""
    shapes: dict[str, tuple[int, ...]] = {}

    def keep(name: str, h: Tensor) -> None:  # None: the features stay as they are
        shapes.setdefault(name, tuple(h.shape))

    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with FeatureHooks(layers, transform=keep), torch.no_grad():
            model.eval()(torch.zeros(2, *input_shape, device=device))
    finally:
        model.train(was_training)
    return shapes


def channel_stats(h: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and standard deviation over the spatial positions of
    (N, C, H, W) features: two (N, C) float32 tensors, differentiable.

    float32 whatever the features' dtype: a bf16 variance of features that are nearly
    constant is mostly rounding error."""
    if h.dim() != 4:
        raise ConfigError(f"feature statistics need (N, C, H, W) features, got shape {tuple(h.shape)}")
    flat = h.flatten(2).float()  # mean of squared deviations: several times faster than Tensor.var on CPU
    mu = flat.mean(2)
    sigma = ((flat - mu.unsqueeze(2)).square().mean(2) + VAR_EPS).sqrt()
    return mu, sigma


def batch_spread(stat: Tensor) -> Tensor:
    """How uncertain a per-sample statistic is: its standard deviation across the batch,
    per channel (population variance, so repeating the batch does not change it)."""
    return (stat.var(dim=0, unbiased=False) + VAR_EPS).sqrt()


def renormalize(h: Tensor, mu: Tensor, sigma: Tensor, new_mu: Tensor, new_sigma: Tensor) -> Tensor:
    """Give features ``h`` (statistics ``mu``, ``sigma``) the statistics ``new_mu``, ``new_sigma``.

    Computed in float32, returned in ``h``'s dtype (bf16 under autocast)."""
    shape = (*mu.shape, 1, 1)  # scale first on the small (N, C) statistics: two passes over h, not four
    out = (h.float() - mu.view(shape)) * (new_sigma / sigma).view(shape) + new_mu.view(shape)
    return out.to(h.dtype)


class FeatureHooks:
    """Forward hooks on feature modules, removed on exit. ``transform(name, h)`` may
    return replacement features (or None to keep them); every output's statistics are
    kept in ``stats`` (without autograd history) when ``record`` is set."""

    def __init__(
        self,
        modules: Sequence[tuple[str, nn.Module]],
        transform: Callable[[str, Tensor], Tensor | None] | None = None,
        record: bool = False,
    ) -> None:
        self.modules, self.transform, self.record = list(modules), transform, record
        self.stats: dict[str, tuple[Tensor, Tensor]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str) -> Callable[[nn.Module, object, Tensor], Tensor | None]:
        def hook(module: nn.Module, inputs: object, output: Tensor) -> Tensor | None:
            replaced = self.transform(name, output) if self.transform is not None else None
            if self.record:  # as constants: recorded statistics describe, they are not trained through
                with torch.no_grad():
                    self.stats[name] = channel_stats(output if replaced is None else replaced)
            return replaced
        return hook

    def __enter__(self) -> FeatureHooks:
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
