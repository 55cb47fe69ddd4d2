"""PyTorch's global numerics switches, set explicitly for every run and recorded.

Determinism: exact on a CPU (a rerun with the same seed is bit-identical), fast on a
GPU (cuDNN autotuning, nondeterministic kernels allowed) unless ``engine.deterministic``
says otherwise. TF32 (tensor-core matmuls and convolutions with a 10-bit mantissa, on
Ampere and newer GPUs): allowed while training, where it is a speed setting like bf16,
and off during the final evaluation, so that an "fp32" evaluation is fp32.
"""
from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Backend:
    """What was in force for a run (the record's ``backend``); TF32 is None off CUDA."""

    deterministic: bool
    cudnn_benchmark: bool
    tf32_training: bool | None
    tf32_evaluation: bool | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_deterministic(setting: bool | None, device: torch.device) -> bool:
    """``engine.deterministic``; None (the default) means exact on a CPU, fast on a GPU."""
    return device.type != "cuda" if setting is None else setting


def configure(device: torch.device, deterministic: bool | None) -> Backend:
    """Set the switches for training on ``device`` and say what they are."""
    exact = resolve_deterministic(deterministic, device)
    keep_freed_memory()
    if exact:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_deterministic(exact)
    torch.backends.cudnn.benchmark = not exact
    cuda = device.type == "cuda"
    set_tf32(cuda)
    return Backend(exact, not exact, True if cuda else None, False if cuda else None)


#: glibc's mallopt parameters and the values robench sets (see keep_freed_memory)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD, _TRIM_THRESHOLD = 32 << 20, 1 << 30
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks up to 32 MiB for reuse instead of returning them to
    the kernel.

    With glibc's defaults, activation-sized tensors on a CPU are mapped and unmapped at
    every attack step, and every page is faulted in again: on the default digits run,
    1.4 to 3.4 million page faults and 4 to 12 s of system time, varying from run to
    run. Kept, the run makes about 0.16 million and spends 1 s in the kernel. This is
    what ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` do; a user who sets those
    (or ``GLIBC_TUNABLES``) keeps their own settings. No effect off glibc. Returns
    whether the settings were made.
    """
    if not sys.platform.startswith("linux") or any(name in os.environ for name in _MALLOC_ENV):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl or another C library
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def set_deterministic(exact: bool) -> None:
    """``torch.use_deterministic_algorithms(exact, warn_only=True)``, without its import of
    TorchInductor's config (1.2 s of a one-minute CPU run) when nothing has loaded
    Inductor yet: the same switch is then set directly, and
    :func:`sync_inductor_determinism` hands it to Inductor before anything compiles."""
    direct = getattr(torch._C, "_set_deterministic_algorithms", None)
    if "torch._inductor.config" in sys.modules or direct is None:
        torch.use_deterministic_algorithms(exact, warn_only=True)
    else:
        direct(exact, warn_only=True)


def sync_inductor_determinism() -> None:
    """Give TorchInductor the determinism in force (call before ``torch.compile``)."""
    torch.use_deterministic_algorithms(
        torch.are_deterministic_algorithms_enabled(),
        warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
    )


def set_tf32(enabled: bool) -> tuple[bool, bool]:
    """Allow or forbid TF32 in matmuls and cuDNN convolutions; returns the previous pair."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return before


@contextmanager
def evaluation_switches() -> Iterator[None]:
    """The evaluation's switches inside the block, training's again afterwards: TF32 off
    ("fp32" evaluation means fp32) and cuDNN's autotuner off (AutoAttack and Square shrink
    their batch to the points still robust almost every iteration, and the autotuner
    would time every new shape's kernels again)."""
    matmul, conv = set_tf32(False)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = conv
        torch.backends.cudnn.benchmark = benchmark
