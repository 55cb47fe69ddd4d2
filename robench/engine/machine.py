"""The device a run uses and the machine it runs on.

The same seed and config can give a different robust accuracy on another CPU or GPU
kind (other vector units, other kernels), so records name the machine: the CPU model
and its SIMD features, the GPU, the thread count and the torch build
(:func:`describe_machine`; :func:`robench.results.records.machine_kind` reads a record's).
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from robench.api.errors import ConfigError

#: the CPU flags that decide which vector kernels run (the same selection as the golden tests')
SIMD_PREFIXES = ("avx", "amx", "fma", "sse4")
CPUINFO = Path("/proc/cpuinfo")


def resolve_device(spec: str) -> torch.device:
    """The torch device a config's ``device`` names, refused here when it cannot be used,
    so that a bad device fails before any data is loaded."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device: unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: {spec!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {spec!r} requested but no CUDA device is available")
    return device


def device_label(device: torch.device) -> str:
    """A record's one-line ``device``: the GPU's name, or the CPU architecture and thread count."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _cpuinfo() -> dict[str, str]:
    """The first value of each key of ``/proc/cpuinfo`` (empty where there is none, as on macOS)."""
    info: dict[str, str] = {}
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return info
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip(), value.strip())
    return info


def describe_machine(device: torch.device) -> dict[str, Any]:
    """A record's ``machine`` section: what a run's numbers may depend on beyond its config."""
    info = _cpuinfo()
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "simd": sorted(f for f in info.get("flags", "").split() if f.startswith(SIMD_PREFIXES)),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }

