"""torch.compile in training: one batch shape, a bounded set of graphs, no silent fallback."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from robench.api import TensorSplit
from robench.api.model import NormalizedClassifier
from robench.api.threat import ThreatModel
from robench.core.config import EngineConfig, TrainConfig
from robench.core.registry import get_registry
from robench.engine.compiled import RecompileLimit, compile_step_model, no_silent_fallback
from robench.engine.train import train

CPU = torch.device("cpu")


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _compiled_training(n_images: int, epochs: int, defense: str = "pgd-at") -> int:
    """Graphs compiled while training a fresh small model with --compile, from empty caches."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = get_registry("architecture").create("smallcnn", {"width": 4, "hidden": 16}).build(10, (3, 8, 8))
    model = NormalizedClassifier(net, (0.5,) * 3, (0.25,) * 3)
    split = TensorSplit(torch.randint(0, 256, (n_images, 3, 8, 8), dtype=torch.uint8), torch.arange(n_images) % 10)
    plugin = get_registry("defense").create(defense, {"steps": 2})
    before = _graphs()
    train(model, plugin, split, ThreatModel("Linf", "8/255"), TrainConfig(epochs=epochs, batch_size=16),
          device=CPU, generator=torch.Generator().manual_seed(0), engine=EngineConfig(compile=True))
    return _graphs() - before


def test_graphs_do_not_grow_with_epochs_or_a_smaller_last_batch() -> None:
    """40 images at batch 16: batches of 16, 16 and 8; the 8 runs eagerly. Three epochs
    compile no more graphs than one, and no more than a split without a short batch."""
    one_epoch = _compiled_training(40, epochs=1)
    assert one_epoch >= 1  # the step was compiled at all
    assert _compiled_training(40, epochs=3) == one_epoch
    assert _compiled_training(32, epochs=1) == one_epoch


def test_hitting_the_recompile_limit_is_an_error_not_a_quiet_fallback() -> None:
    """A module whose forward changes with every call (a new constant each time)."""
    class Drifting(nn.Module):
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Drifting.calls += 1
            return x * Drifting.calls

    stepped = compile_step_model(Drifting())
    with torch._dynamo.config.patch(recompile_limit=2), pytest.raises(RecompileLimit, match="Train without --compile"):
        with no_silent_fallback(True):
            for _ in range(5):
                stepped(torch.ones(2))
