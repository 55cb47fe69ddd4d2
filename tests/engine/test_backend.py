"""The numerics switches every run sets and records (robench.engine.backend), and
optimizer state that follows its parameters' memory format on resume."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from torch import nn

from robench.engine.backend import Backend, configure, evaluation_switches
from robench.engine.train import load_optimizer_state


@pytest.fixture(autouse=True)
def _restore_switches() -> Iterator[None]:
    """The tests change process-wide switches; put them back."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=True)
    torch.backends.cudnn.benchmark = saved[1]
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[2], saved[3]


def test_exact_on_a_cpu_fast_on_a_gpu_unless_told() -> None:
    assert configure(torch.device("cpu"), None) == Backend(True, False, None, None)
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    # the switches for a GPU can be set (and tested) without one
    assert configure(torch.device("cuda"), None) == Backend(False, True, True, False)
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert configure(torch.device("cuda"), True) == Backend(True, False, True, False)
    assert configure(torch.device("cpu"), False) == Backend(False, True, None, None)


def test_the_final_evaluation_runs_without_tf32_or_autotuning() -> None:
    configure(torch.device("cuda"), None)
    with evaluation_switches():
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cudnn.benchmark  # AutoAttack's shrinking batches: no re-tuning per shape
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # training's, back
    assert torch.backends.cudnn.benchmark


def test_records_say_what_was_in_force(tmp_path: Path) -> None:
    for setting, exact in (("null", True), ("false", False)):
        results = tmp_path / setting
        proc = run_cli("run", "--results-dir", str(results), "--set", "train.epochs=1", "--attack", "fgsm",
                       "--set", "eval.checks=false", "--set", f"engine.deterministic={setting}", "-q")
        assert proc.returncode == 0, proc.stderr
        record = json.loads(next((results / "records").rglob("*.json")).read_text())
        assert record["backend"] == {"deterministic": exact, "cudnn_benchmark": not exact,
                                     "tf32_training": None, "tf32_evaluation": None}


def _conv_with_momentum(channels_last: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.rand(2, 3, 8, 8)
    net(x.contiguous(memory_format=torch.channels_last) if channels_last else x).sum().backward()
    opt.step()
    return net, opt


@pytest.mark.parametrize("saved_cl, resumed_cl", [(True, False), (False, True)])
def test_resumed_momentum_follows_the_parameters_memory_format(saved_cl: bool, resumed_cl: bool) -> None:
    _, saved = _conv_with_momentum(saved_cl)
    state = saved.state_dict()
    net, opt = _conv_with_momentum(resumed_cl)
    weight = net[0].weight
    assert state["state"][0]["momentum_buffer"].stride() != weight.stride()  # the layouts differ
    load_optimizer_state(opt, state, "last.pt")
    for param in net.parameters():
        buffer = opt.state[param]["momentum_buffer"]
        assert buffer.stride() == param.stride()
    assert torch.equal(opt.state[weight]["momentum_buffer"], state["state"][0]["momentum_buffer"])  # same values


def test_determinism_reaches_inductor_only_when_compiling() -> None:
    """Setting the switch must not import TorchInductor (over a second per run), and a
    compiled step must still see it."""
    code = (
        "import sys, torch\n"
        "from robench.engine.backend import configure\n"
        "configure(torch.device('cpu'), None)\n"
        "assert torch.are_deterministic_algorithms_enabled(), 'switch not set'\n"
        "assert torch.is_deterministic_algorithms_warn_only_enabled(), 'not warn-only'\n"
        "assert 'torch._inductor.config' not in sys.modules, 'Inductor imported'\n"
        "from robench.engine.compiled import compile_step_model\n"
        "compile_step_model(torch.nn.Linear(2, 2))\n"
        "import torch._inductor.config as inductor\n"
        "assert inductor.deterministic, 'Inductor not told'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def _page_faults(configure_first: bool) -> int:
    """Minor page faults of 100 activation-sized conv forwards in a fresh process."""
    code = (
        "import resource, torch\n"
        "from robench.engine.backend import configure\n"
        f"if {configure_first}: configure(torch.device('cpu'), None)\n"
        "x, conv = torch.rand(348, 1, 8, 8), torch.nn.Conv2d(1, 64, 3, padding=1)\n"
        "for _ in range(3): conv(x)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "with torch.no_grad():\n"
        "    for _ in range(100): y = conv(x).relu(); del y\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_run_reuses_freed_memory_instead_of_faulting_it_in_again() -> None:
    plain, kept = _page_faults(False), _page_faults(True)
    assert kept * 4 < plain, (plain, kept)
