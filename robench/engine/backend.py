"""PyTorch's global numerics switches, set explicitly for every run and recorded.

Determinism: exact on a CPU (a rerun with the same seed is bit-identical), fast on a
GPU (cuDNN autotuning, nondeterministic kernels allowed) unless ``engine.deterministic``
says otherwise. TF32 (tensor-core matmuls and convolutions with a 10-bit mantissa, on
Ampere and newer GPUs): allowed while training, where it is a speed setting like bf16,
and off during the final evaluation, so that an "fp32" evaluation is fp32.
"""
from __future__ import annotations

import os
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
    if exact:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(exact, warn_only=True)
    torch.backends.cudnn.benchmark = not exact
    cuda = device.type == "cuda"
    set_tf32(cuda)
    return Backend(exact, not exact, True if cuda else None, False if cuda else None)


def set_tf32(enabled: bool) -> tuple[bool, bool]:
    """Allow or forbid TF32 in matmuls and cuDNN convolutions; returns the previous pair."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return before


@contextmanager
def exact_fp32() -> Iterator[None]:
    """TF32 off inside the block (the final evaluation), as it was afterwards."""
    matmul, conv = set_tf32(False)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = conv
