"""Networks that robench did not build, for ``robench eval --model`` tests: a user's module.

``digits_linear`` is a linear classifier of raw [0, 1] digits, fitted by least squares
(no training loop, deterministic); ``digits_linear_blank`` has its shape and zero
weights, so only a weights file makes it accurate. The rest fail in the ways a user's
factory can.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def _blank() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def digits_linear_blank() -> nn.Module:
    model = _blank()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def digits_linear() -> nn.Module:
    from robench.core.registry import get_registry

    train = get_registry("dataset").create("digits").load(Path(), 0).train
    x = train.images().flatten(1)
    x1 = torch.cat([x, torch.ones(len(x), 1)], 1)
    targets = nn.functional.one_hot(train.y, 10).float()
    solution = torch.linalg.solve(x1.T @ x1 + 1e-2 * torch.eye(65), x1.T @ targets)
    model = _blank()
    with torch.no_grad():
        model[1].weight.copy_(solution[:64].T)
        model[1].bias.copy_(solution[64])
    return model


def raises() -> nn.Module:
    raise RuntimeError("no GPU found\n(pretend)")


def not_a_module() -> dict:
    return {"weights": 1}


class Zoo:
    @staticmethod
    def create() -> nn.Module:
        return digits_linear()
