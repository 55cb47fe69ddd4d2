"""Checks that need a CUDA device; skipped elsewhere. Run them with ``pytest -m gpu``.

They prove what a CPU cannot show: that a training step never waits for the GPU.
"""
from __future__ import annotations

import pytest
import torch

from robench.api import TensorSplit
from robench.api.model import NormalizedClassifier
from robench.api.threat import ThreatModel
from robench.core.config import EngineConfig, TrainConfig
from robench.core.registry import get_registry
from robench.engine.batches import iterate_batches
from robench.engine.distributed import SINGLE
from robench.engine.precision import Precision
from robench.engine.train import _Epoch, _step, make_optimizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

STEPS = 20


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("defense", ["standard", "pgd-at", "trades", "mart", "uadat"])
def test_training_steps_never_synchronise_with_the_host(defense: str, precision: str) -> None:
    """20 steps of the training loop's own step (batches drawn and augmented on the
    device, the defense's loss, fused SGD, metrics kept on the device) under
    ``torch.cuda.set_sync_debug_mode("error")``: any ``.item()``, ``bool(tensor)``,
    ``.cpu()`` or copy from pageable host memory would raise."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    cifar = get_registry("dataset").create("cifar10")
    net = get_registry("architecture").create("preact-resnet-18").build(10, (3, 32, 32))
    model = NormalizedClassifier(net, cifar.mean, cifar.std).to(device).train()
    split = TensorSplit(torch.randint(0, 256, (STEPS * 32, 3, 32, 32), dtype=torch.uint8, device=device),
                        torch.randint(0, 10, (STEPS * 32,), device=device))
    optimizer = make_optimizer(model, TrainConfig(), device)
    plugin = get_registry("defense").create(defense)
    threat, amp = ThreatModel("Linf", "8/255"), Precision(precision, device)
    augment_gen = torch.Generator(device).manual_seed(0)
    ep = _Epoch.fresh(1, torch.randperm(len(split), device=device), device)
    batches = iterate_batches(split, 32, device=device, augment=lambda x: cifar.augment(x, augment_gen), indices=ep.order)
    first = next(batches)  # warm-up outside the check: cuBLAS/cuDNN handles, lazy init
    _step(model, plugin, optimizer, *first, threat, amp, SINGLE, EngineConfig(), ep, 0, 32)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i, (x, y) in enumerate(batches, start=1):
            for group in optimizer.param_groups:
                group["lr"] = 0.1 / (i + 1)
            _step(model, plugin, optimizer, x, y, threat, amp, SINGLE, EngineConfig(), ep, i, 32)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(ep.seen.item()) == STEPS * 32 and torch.isfinite(ep.loss_sum).item()
