"""The device a config names and the machine a run records."""
from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from robench.api.errors import ConfigError
from robench.engine.machine import describe_machine, resolve_device

CPU = torch.device("cpu")


def _cpuinfo_line(key: str) -> str:
    """The first ``key`` line's value of /proc/cpuinfo, read here apart from robench's reader."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.split(":", 1)[0].strip() == key:
            return line.split(":", 1)[1].strip()
    return ""


def test_the_machine_section_names_cpu_model_simd_threads_and_torch() -> None:
    machine = describe_machine(CPU)
    assert machine["cpu"] == (_cpuinfo_line("model name") or platform.processor() or platform.machine())
    assert machine["cpu"]
    flags = _cpuinfo_line("flags").split()
    assert machine["simd"] == sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4")))
    assert machine["torch"] == torch.__version__ and machine["gpu"] is None
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert describe_machine(CPU)["threads"] == 1
    finally:
        torch.set_num_threads(threads)
    assert describe_machine(CPU)["threads"] == threads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_machine_names_its_gpu() -> None:
    device = torch.device("cuda", 0)
    assert describe_machine(device)["gpu"] == torch.cuda.get_device_name(device)


def test_device_choice() -> None:
    assert resolve_device(" CPU ") == CPU
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for spec, needle in (("tpu", "unknown device"), ("meta", "not supported")):
        with pytest.raises(ConfigError, match=needle):
            resolve_device(spec)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")
