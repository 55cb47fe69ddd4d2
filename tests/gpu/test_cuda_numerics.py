"""What robench's fast settings do to the numbers on a GPU: bf16 and channels-last
against fp32, fused SGD across a resume, a whole run, AutoAttack against the CPU.

Run with ``pytest -m gpu`` on a CUDA machine; skipped elsewhere. To check the tests
themselves without a GPU, ``ROBENCH_GPU_TEST_DEVICE=cpu pytest -m gpu tests/gpu/test_cuda_numerics.py``
runs them on the CPU (slowly; AutoAttack then compares the CPU with itself).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from numerics import assert_bf16_agrees
from torch import nn

from robench.api.model import NormalizedClassifier
from robench.api.threat import ThreatModel
from robench.core.config import TrainConfig
from robench.core.registry import get_registry
from robench.engine.backend import evaluation_switches
from robench.engine.train import load_optimizer_state, make_optimizer, train_step

DEVICE = torch.device(os.environ.get("ROBENCH_GPU_TEST_DEVICE", "cuda"))
#: benchmarks/gpu/prepare.sh's folder with AutoAttack's CPU side (best.pt, cpu.json), if any
AA_REFERENCE = os.environ.get("ROBENCH_GPU_AA_REFERENCE")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
]

def _model(arch: str = "preact-resnet-18") -> nn.Module:
    torch.manual_seed(0)
    net = get_registry("architecture").create(arch, {}).build(10, (3, 32, 32))
    return NormalizedClassifier(net, (0.5,) * 3, (0.25,) * 3).to(DEVICE).train()


def _batch(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 32, 32, generator=gen).to(DEVICE), torch.randint(0, 10, (n,), generator=gen).to(DEVICE)


@pytest.mark.parametrize("defense", ["pgd-at", "trades", "mart", "uadat"])
def test_bf16_channels_last_step_agrees_with_fp32(defense: str) -> None:
    """One step on 1,024 digits in bf16 + channels-last against exact fp32 (TF32 off),
    same trained weights: the loss within 2%, the update within 25% (tests/numerics.py says why)."""
    assert_bf16_agrees(defense, DEVICE)


def test_fused_sgd_resumes_across_a_channels_last_change(tmp_path: Path) -> None:
    """Momentum saved from a contiguous model (fused SGD on CUDA) continues on a
    channels-last one: the step after the resume equals the uninterrupted one's."""
    x, y = _batch(32)
    defense = get_registry("defense").create("standard")
    threat = ThreatModel("Linf", "8/255")
    with evaluation_switches():
        model = _model("preact-resnet-18")
        optimizer = make_optimizer(model, TrainConfig(), DEVICE)
        train_step(model, defense, optimizer, x, y, threat)
        torch.save({"weights": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "last.pt")
        train_step(model, defense, optimizer, x, y, threat)  # the uninterrupted second step

        saved = torch.load(tmp_path / "last.pt", weights_only=True)
        start = {k: v.detach().clone() for k, v in saved["weights"].items()}
        resumed = _model("preact-resnet-18").to(memory_format=torch.channels_last)
        resumed.load_state_dict(saved["weights"])
        opt2 = make_optimizer(resumed, TrainConfig(), DEVICE)
        load_optimizer_state(opt2, saved["optimizer"], tmp_path / "last.pt")
        train_step(resumed, defense, opt2, x.contiguous(memory_format=torch.channels_last), y, threat)
    # channels-last convolutions round differently (measured on a CPU: at most 0.3% of a
    # tensor's update); a lost or misplaced momentum changes the update by about all of it
    for (name, a), b in zip(model.named_parameters(), resumed.parameters()):
        update = (a - start[name]).norm()
        assert float((b - a).norm()) <= 0.01 * float(update), name


def test_two_epoch_run_on_the_device_lands_a_record(tmp_path: Path) -> None:
    out = run_cli("run", "--epochs", "2", "--device", str(DEVICE), "--attack", "fgsm", "--n-eval", "200",
                  "--results-dir", str(tmp_path / "res"), "-q", env={"ROBENCH_RUNS": str(tmp_path / "runs")})
    assert out.returncode == 0, out.stderr[-3000:]
    (path,) = (tmp_path / "res").glob("records/*/*/*.json")
    rec = json.loads(path.read_text())
    assert len(rec["history"]) == 2 and rec["accuracy"]["clean"] > 15  # above chance after 2 epochs
    assert rec["device"].startswith(DEVICE.type)
    cuda = DEVICE.type == "cuda"
    assert rec["backend"]["tf32_training"] is (True if cuda else None)
    assert rec["backend"]["tf32_evaluation"] is (False if cuda else None)
    assert rec["backend"]["deterministic"] is (not cuda)


def _cpu_side(tmp_path: Path, env: dict[str, str]) -> tuple[Path, dict]:
    """A standard-trained digits checkpoint and its AutoAttack report on the CPU: carried
    from ``benchmarks/gpu/prepare.sh`` in ``$ROBENCH_GPU_AA_REFERENCE`` (its CPU side takes
    minutes, the GPU machine's time is short), else made here."""
    if AA_REFERENCE:
        return Path(AA_REFERENCE) / "best.pt", json.loads((Path(AA_REFERENCE) / "cpu.json").read_text())
    trained = run_cli("run", "--defense", "standard", "--epochs", "3", "--device", str(DEVICE), "--attack", "fgsm",
                      "--n-eval", "200", "--results-dir", str(tmp_path / "res"), "-q", env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (checkpoint,) = (tmp_path / "runs").glob("*/best.pt")
    return checkpoint, _autoattack(checkpoint, "cpu", 200, tmp_path, env)


def _autoattack(checkpoint: Path, device: str, n: int, tmp_path: Path, env: dict[str, str]) -> dict:
    out = run_cli("eval", "--checkpoint", str(checkpoint), "--device", device, "--attack", "autoattack",
                  "--eps", "1/64", "--n-eval", str(n), "--set", "eval.checks=false",
                  "--out", str(tmp_path / f"{device}.json"), "-q", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((tmp_path / f"{device}.json").read_text())


def test_autoattack_on_the_device_agrees_with_the_cpu(tmp_path: Path) -> None:
    """The standard AutoAttack on the digits test points of a standard-trained model, at a
    budget where it breaks some but not all (eps 1/64), on the device and on the CPU."""
    env = {"ROBENCH_RUNS": str(tmp_path / "runs")}
    checkpoint, cpu = _cpu_side(tmp_path, env)
    assert cpu["threat"]["eps"] == "1/64" and [a["name"] for a in cpu["eval"]["attacks"]] == ["autoattack"], cpu
    on_device = _autoattack(checkpoint, str(DEVICE), cpu["eval"]["n"], tmp_path, env)
    robust = {"cpu": cpu["accuracy"]["AutoAttack"], str(DEVICE): on_device["accuracy"]["AutoAttack"]}
    assert 5 < robust["cpu"] < 95, robust  # a budget that tells the two apart if they differ
    assert abs(robust[str(DEVICE)] - robust["cpu"]) <= 1.0, robust
