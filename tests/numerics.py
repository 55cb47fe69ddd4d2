"""Shared by the CPU and GPU tests of training precision: one step of a defense in bf16 +
channels-last against exact fp32, on a small model trained on real digits first (an
untrained model's near-constant outputs hide what rounding does to confident ones)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from robench.api.model import NormalizedClassifier
from robench.api.threat import ThreatModel
from robench.core.config import TrainConfig
from robench.core.registry import get_registry
from robench.engine.backend import evaluation_switches
from robench.engine.precision import Precision
from robench.engine.train import make_optimizer, train_step

THREAT = ThreatModel("Linf", "3/16")


def trained_digits_model(device: torch.device, n: int = 1024) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """smallcnn after 10 epochs of standard training on ``n`` digits, and those digits."""
    dataset = get_registry("dataset").create("digits")
    train = dataset.load(None, 0).train
    x, y = train.x[:n].to(device), train.y[:n].to(device)
    torch.manual_seed(0)
    net = get_registry("architecture").create("smallcnn", {}).build(10, (1, 8, 8))
    model = NormalizedClassifier(net, dataset.mean, dataset.std).to(device).train()
    optimizer, standard = make_optimizer(model, TrainConfig(), device), get_registry("defense").create("standard")
    with evaluation_switches():
        for _ in range(10):
            for i in range(0, n, 64):
                train_step(model, standard, optimizer, x[i:i + 64], y[i:i + 64], THREAT)
    return model, x, y


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in model.parameters()])


def one_step(model: nn.Module, defense: str, x: torch.Tensor, y: torch.Tensor, precision: str,
             seed: int = 2, channels_last: bool = False) -> tuple[float, torch.Tensor]:
    """The loss and the weight update of one training step of a copy of ``model``."""
    model = copy.deepcopy(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    before = _flat(model)
    optimizer = make_optimizer(model, TrainConfig(), x.device)
    torch.manual_seed(seed)  # the attack's and the defense's random draws
    out = train_step(model, get_registry("defense").create(defense), optimizer, x, y, THREAT,
                     Precision(precision, x.device))
    return float(out.loss.detach()), _flat(model) - before


def bf16_against_fp32(defense: str, device: torch.device) -> dict[str, float]:
    """How far bf16 + channels-last moves one step's loss and update from exact fp32, and
    how far another random seed moves the fp32 update (the step's own variation)."""
    model, x, y = trained_digits_model(device)
    with evaluation_switches():
        loss_32, update_32 = one_step(model, defense, x, y, "fp32")
        _, other_seed = one_step(model, defense, x, y, "fp32", seed=3)
    loss_16, update_16 = one_step(model, defense, x, y, "bf16", channels_last=True)
    norm = update_32.norm()
    assert norm > 0
    return {
        "loss": abs(loss_16 - loss_32) / abs(loss_32),
        "bf16": float((update_16 - update_32).norm() / norm),
        "seed": float((other_seed - update_32).norm() / norm),
    }


#: One step in bf16 + channels-last against exact fp32, measured 2026-12-08 on this CPU
#: (AMD EPYC, 1 thread, torch 2.14.1) over 5 initialisations (trained_digits_model's seed
#: 0-4) x step seeds 2-6 (UAD-AT also 7-16 on initialisations 0 and 2; "another seed":
#: step seed + 1), relative to the fp32 update (min-max):
#:
#:   defense  loss       update, bf16   update, another seed
#:   PGD-AT   0.01-0.24%  1.6-2.7%      4.5-9.5%
#:   TRADES   0.03-0.42%  2.2-3.3%      12.7-27.4%
#:   MART     0.00-0.47%  1.8-3.2%      1.5-3.9%
#:   UAD-AT   0.00-0.28%  1.6-15.6%     4.9-19.4%
#:
#: UAD-AT is bimodal: about 2% on most draws, 4-16% on 19 of 45, where bf16 moves its
#: update about as far as another seed does (up to 1.1 times). A bound of a multiple of
#: another seed's difference (the earlier max(10%, 1.5 x seed)) is itself a random draw,
#: and no single bound can lie below every defense's seed difference (MART's is as small
#: as its bf16 one). So one fixed bound: 25%, 1.6 times the worst draw (UAD-AT's 15.6%)
#: for another device's kernels, 7.6 times the worst of the other three (3.3%). It
#: still catches what this test exists for: before TRADES and MART computed their
#: softmax terms in fp32 (and TRADES' first attack step), bf16 moved TRADES' loss by
#: 17-73% and MART's update by 10^7. The loss bound, 2%, is 4 times the worst draw (0.47%).
LOSS_RTOL = 0.02
UPDATE_RTOL = 0.25


def assert_bf16_agrees(defense: str, device: torch.device) -> None:
    """Loss within LOSS_RTOL and weight update within UPDATE_RTOL of exact fp32; the
    other seed's difference is in the message, for scale."""
    found = bf16_against_fp32(defense, device)
    assert found["loss"] <= LOSS_RTOL, found
    assert found["bf16"] <= UPDATE_RTOL, found
