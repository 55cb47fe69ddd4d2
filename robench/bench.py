"""``robench bench``: robench's training step against the official-style reference loop.

Both run in one process, interleaved, on the same model, batch and device: robench's
:func:`robench.engine.train.train_step` with a defense plugin, and the plain step of
the same defense in ``benchmarks/reference_loops.py`` (fp32, eager, weight gradients
in the attack, TRADES' clean target recomputed). The reference loops live in the
source checkout's ``benchmarks/`` so that they stay plain scripts anyone can read and
run; robench imports them from there.

Throughput is converted to FLOP/s with the per-image costs below (one
forward pass F = 2 x MACs; a PGD-10 AT step is about 23F per image), so the
achieved fraction of a device's peak can be printed when the peak is given.
"""
from __future__ import annotations

import copy
import importlib.util
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import nn

from robench.config import TrainConfig
from robench.engine.precision import Precision
from robench.engine.train import make_optimizer, train_step
from robench.errors import UserError
from robench.flops import count_macs
from robench.model import NormalizedClassifier
from robench.paths import source_checkout
from robench.registry import get_registry
from robench.threat import ThreatModel

#: forward-pass equivalents per training image (published compute counts; TRADES with
#: robench's cached clean target; UAD-AT estimated: PGD-AT + a clean pass + a second
#: sampled copy + about two training steps of double backprop)
FORWARD_PASSES = {"standard": 3, "pgd-at": 23, "trades": 27, "mart": 26, "uadat": 35}


@dataclass(frozen=True)
class BenchRow:
    defense: str
    seconds: float
    images_per_s: float
    reference_seconds: float | None
    #: robench time / reference time (below 1: robench is faster)
    ratio: float | None
    tflops: float | None
    peak_fraction: float | None


def reference_loops() -> ModuleType:
    """``benchmarks/reference_loops.py`` of the source checkout."""
    root = source_checkout()
    path = root / "benchmarks" / "reference_loops.py" if root else None
    if path is None or not path.is_file():
        raise UserError("robench bench compares with benchmarks/reference_loops.py of a source checkout; "
                        "install robench from a clone (pip install -e .)")
    spec = importlib.util.spec_from_file_location("robench_reference_loops", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def bench(
    defenses: Sequence[str], arch: str, *, batch_size: int, size: int, device: torch.device, repeats: int = 3,
    warmup: int = 1, eps: str = "8/255", peak_tflops: float | None = None, seed: int = 0,
    precision: str = "fp32", channels_last: bool = False, compile_model: bool = False,
) -> list[BenchRow]:
    """Median seconds per training step of each defense, robench and reference interleaved.

    ``precision``, ``channels_last`` and ``compile_model`` apply to robench's side only:
    the reference stays what the official code does (fp32, eager, contiguous).
    """
    torch.manual_seed(seed)
    net = get_registry("architecture").create(arch, {}).build(10, (3, size, size))
    model: nn.Module = NormalizedClassifier(net, (0.5,) * 3, (0.25,) * 3).to(device)
    forward_flops = 2 * count_macs(model, (3, size, size))
    x = torch.rand(batch_size, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    mine: nn.Module = copy.deepcopy(model)  # same weights, robench's memory format
    x_ours = x
    if channels_last:
        mine.to(memory_format=torch.channels_last)
        x_ours = x.contiguous(memory_format=torch.channels_last)
    stepped = torch.compile(mine) if compile_model else mine
    threat = ThreatModel("Linf", eps)
    loops = reference_loops().REFERENCE_STEPS
    start = copy.deepcopy(model.state_dict())
    rows = []
    for name in defenses:
        defense = get_registry("defense").create(name, {})
        ref = loops.get(name)
        times: dict[str, list[float]] = {"robench": [], "reference": []}
        for i in range(warmup + repeats):
            mine.load_state_dict(start)
            opt = make_optimizer(mine.train(), TrainConfig(), device)
            prec = Precision(precision, device)
            took = _timed(lambda: train_step(stepped.train(), defense, opt, x_ours, y, threat, prec), device)
            if i >= warmup:
                times["robench"].append(took)
            if ref is not None:
                model.load_state_dict(start)
                opt = make_optimizer(model.train(), TrainConfig())
                took = _timed(lambda: ref(model, opt, x, y, eps=threat.value), device)
                if i >= warmup:
                    times["reference"].append(took)
        ours = statistics.median(times["robench"])
        theirs = statistics.median(times["reference"]) if times["reference"] else None
        passes = FORWARD_PASSES.get(name)
        tflops = passes * forward_flops * batch_size / ours / 1e12 if passes else None
        rows.append(BenchRow(
            name, ours, batch_size / ours, theirs, ours / theirs if theirs else None, tflops,
            tflops / peak_tflops if tflops is not None and peak_tflops else None,
        ))
    return rows
