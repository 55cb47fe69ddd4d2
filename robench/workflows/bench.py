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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from robench.api.errors import ConfigError, UserError
from robench.api.model import NormalizedClassifier
from robench.api.threat import ThreatModel
from robench.core.config import TrainConfig, parse_set
from robench.core.flops import count_macs
from robench.core.paths import source_checkout
from robench.core.registry import get_registry
from robench.engine.compiled import compile_step_model, no_silent_fallback
from robench.engine.precision import Precision
from robench.engine.train import make_optimizer, train_step


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
    #: the largest CUDA memory robench's step held (10^9 bytes); None off CUDA
    peak_memory_gb: float | None = None

    @property
    def reference_images_per_s(self) -> float | None:
        return None if self.reference_seconds is None else self.images_per_s * self.seconds / self.reference_seconds


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


@contextmanager
def _switches(*, tf32_matmul: bool, tf32_conv: bool, cudnn_benchmark: bool) -> Iterator[None]:
    """PyTorch's global CUDA numerics switches for one side of the comparison, restored after."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32_matmul, tf32_conv
    torch.backends.cudnn.benchmark = cudnn_benchmark
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = before


#: robench's training settings on a GPU (robench.engine.backend): TF32 and cuDNN autotuning
ROBENCH_SWITCHES = {"tf32_matmul": True, "tf32_conv": True, "cudnn_benchmark": True}
#: what a script that sets nothing runs with, as the official code does (PyTorch's defaults)
REFERENCE_SWITCHES = {"tf32_matmul": False, "tf32_conv": True, "cudnn_benchmark": False}


def _timed(fn: Callable[[], object], device: torch.device, switches: dict[str, bool]) -> float:
    with _switches(**switches):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start


@dataclass
class _Setup:
    """One model's weights in both sides' forms, and the batch each side trains on."""

    reference: nn.Module
    robench: nn.Module
    stepped: nn.Module
    start: dict[str, Any]
    x: Tensor
    x_robench: Tensor
    y: Tensor
    forward_flops: int


def _setup(arch: str, batch_size: int, size: int, device: torch.device, channels_last: bool,
           compile_model: bool) -> _Setup:
    net = get_registry("architecture").create(arch, {}).build(10, (3, size, size))
    model: nn.Module = NormalizedClassifier(net, (0.5,) * 3, (0.25,) * 3).to(device)
    flops = 2 * count_macs(model, (3, size, size))
    x = torch.rand(batch_size, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    mine: nn.Module = copy.deepcopy(model)  # same weights, robench's memory format
    x_ours = x
    if channels_last:
        mine.to(memory_format=torch.channels_last)
        x_ours = x.contiguous(memory_format=torch.channels_last)
    stepped = compile_step_model(mine) if compile_model else mine  # as robench run --compile does
    return _Setup(model, mine, stepped, copy.deepcopy(model.state_dict()), x, x_ours, y, flops)


def defense_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """``uadat`` or ``uadat:align_fraction=0.25,samples=1``: a defense and hyperparameters
    of its own (values as YAML scalars), so that variants are timed side by side."""
    name, _, settings = spec.partition(":")
    items = [s.strip() for s in settings.split(",") if s.strip()]
    params = parse_set(items) if items else {}
    if any(isinstance(v, dict) for v in params.values()):
        raise ConfigError(f"--defense {spec!r}: settings are the defense's own, PARAM=VALUE, without a section")
    return name.strip(), params


def bench(
    defenses: Sequence[str], arch: str, *, batch_size: int, size: int, device: torch.device, repeats: int = 3,
    warmup: int = 1, eps: str = "8/255", peak_tflops: float | None = None, seed: int = 0,
    precision: str = "fp32", channels_last: bool = False, compile_model: bool = False,
    on_row: Callable[[BenchRow], object] | None = None,
) -> list[BenchRow]:
    """Median seconds per training step of each defense, robench and reference interleaved.

    ``precision``, ``channels_last`` and ``compile_model`` apply to robench's side only:
    the reference stays what the official code does (fp32, eager, contiguous, PyTorch's
    default TF32 and cuDNN settings); robench's side runs with its training settings.
    ``on_row`` sees each row as soon as it is measured (to save it before the next).
    """
    torch.manual_seed(seed)
    s = _setup(arch, batch_size, size, device, channels_last, compile_model)
    threat = ThreatModel("Linf", eps)
    loops = reference_loops().REFERENCE_STEPS
    rows = []
    for name in defenses:
        kind, params = defense_variant(name)
        defense = get_registry("defense").create(kind, params, where="defense")
        ref = loops.get(name)  # a variant is not the official method: no reference
        times: dict[str, list[float]] = {"robench": [], "reference": []}
        peak = None
        for i in range(warmup + repeats):
            s.robench.load_state_dict(s.start)
            opt = make_optimizer(s.robench.train(), TrainConfig(), device)
            prec = Precision(precision, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with no_silent_fallback(compile_model):
                took = _timed(lambda: train_step(s.stepped.train(), defense, opt, s.x_robench, s.y, threat, prec),  # noqa: B023
                              device, ROBENCH_SWITCHES)  # (the lambdas run at once, inside the loop)
            if i >= warmup:
                times["robench"].append(took)
            if device.type == "cuda":  # the whole process's, both models' weights included
                peak = max(peak or 0.0, torch.cuda.max_memory_allocated(device) / 1e9)
            if ref is not None:
                s.reference.load_state_dict(s.start)
                opt = make_optimizer(s.reference.train(), TrainConfig())
                took = _timed(lambda: ref(s.reference, opt, s.x, s.y, eps=threat.value), device, REFERENCE_SWITCHES)  # noqa: B023
                if i >= warmup:
                    times["reference"].append(took)
        passes = defense.forward_passes_per_image()  # the defense's own count, as boards show it
        rows.append(_row(name, times, batch_size, s.forward_flops * passes if passes else None, peak_tflops, peak))
        if on_row is not None:
            on_row(rows[-1])
    return rows


def _row(name: str, times: dict[str, list[float]], batch_size: int, step_flops_per_image: float | None,
         peak_tflops: float | None, peak_memory_gb: float | None) -> BenchRow:
    ours = statistics.median(times["robench"])
    theirs = statistics.median(times["reference"]) if times["reference"] else None
    tflops = step_flops_per_image * batch_size / ours / 1e12 if step_flops_per_image else None
    return BenchRow(
        name, ours, batch_size / ours, theirs, ours / theirs if theirs else None, tflops,
        tflops / peak_tflops if tflops is not None and peak_tflops else None, peak_memory_gb,
    )
