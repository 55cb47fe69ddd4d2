"""Mixed precision, channels-last and torch.compile: same training, other arithmetic or kernels."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from torch import nn

from robench.api.model import NormalizedClassifier
from robench.api.perturb import attack_mode, cross_entropy_loss, pgd, scaled_attack_losses
from robench.api.threat import ThreatModel
from robench.core.config import TrainConfig, config_hash, resolve, validate
from robench.core.registry import get_registry
from robench.engine.checkpoint import load_checkpoint
from robench.engine.precision import FP16_ATTACK_SCALE, AutocastClassifier, Precision, evaluation_model
from robench.engine.train import make_optimizer, train, train_step
from robench.workflows.plans import plan_run

CPU = torch.device("cpu")
THREAT = ThreatModel("Linf", "8/255")


def _bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )
    return NormalizedClassifier(net, (0.5,) * 3, (0.25,) * 3)


def _batch(n: int = 8, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_precision_names_and_autocast_dtype() -> None:
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        Precision("fp64", CPU)
    lin = nn.Linear(4, 4)
    x = torch.rand(2, 4)
    with Precision("fp32", CPU).autocast():
        assert lin(x).dtype == torch.float32
    with Precision("bf16", CPU).autocast():
        assert lin(x).dtype == torch.bfloat16
    assert Precision("bf16", CPU).scaler is None and Precision("fp16", CPU).scaler is not None


def test_attack_loss_scale_changes_no_adversary() -> None:
    """A power-of-two scale is exact in fp32: the sign steps, hence the adversaries, are identical."""
    model, (x, y) = _bn_net(), _batch()
    with attack_mode(model):
        plain = pgd(model, x, THREAT, cross_entropy_loss(y), steps=3, step_size=2 / 255)
        with scaled_attack_losses(FP16_ATTACK_SCALE):
            scaled = pgd(model, x, THREAT, cross_entropy_loss(y), steps=3, step_size=2 / 255)
    assert torch.equal(plain, scaled)
    assert not torch.equal(plain, x)


def test_fp16_loss_scaler_state_is_checkpointed(tmp_path: Path) -> None:
    plan = plan_run(validate(resolve(None, {"defense": {"name": "pgd-at", "steps": 1}})))
    torch.manual_seed(0)
    split = plan.dataset.load(None, 0).train
    small = type(split)(split.x[:64], split.y[:64])
    from robench.workflows.plans import build_model

    train(build_model(plan), plan.defense, small, plan.threat, TrainConfig(epochs=1, batch_size=32, precision="fp16"),
          device=CPU, generator=torch.Generator().manual_seed(0), run_dir=tmp_path)
    state = load_checkpoint(tmp_path / "last.pt").train_state or {}
    assert state["grad_scaler"]["scale"] > 0 and "growth_factor" in state["grad_scaler"]


def test_channels_last_step_matches_contiguous_step() -> None:
    """The memory format changes kernels, not the step: loss and new weights agree."""
    x, y = _batch(16)
    pgd_at = get_registry("defense").create("pgd-at", {"steps": 2, "random_start": False})
    results = []
    for channels_last in (False, True):
        model = _bn_net()
        xb = x
        if channels_last:
            model.to(memory_format=torch.channels_last)
            xb = x.contiguous(memory_format=torch.channels_last)
        opt = make_optimizer(model.train(), TrainConfig())
        out = train_step(model, pgd_at, opt, xb, y, THREAT)
        results.append((out.loss.detach(), [p.detach().contiguous() for p in model.parameters()]))
    (loss_a, w_a), (loss_b, w_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    for a, b in zip(w_a, w_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_bf16_step_is_close_to_fp32() -> None:
    x, y = _batch(16)
    pgd_at = get_registry("defense").create("pgd-at", {"steps": 2, "random_start": False})
    losses = []
    for name in ("fp32", "bf16"):
        model = _bn_net()
        opt = make_optimizer(model.train(), TrainConfig())
        losses.append(train_step(model, pgd_at, opt, x, y, THREAT, Precision(name, CPU)).loss.detach().float())
    assert abs(losses[0] - losses[1]) < 0.05 * losses[0]


def test_compiled_steps_match_eager_steps_uadat_included() -> None:
    """--compile: PGD-AT fully compiled; UAD-AT's outer loss (double backward, hooks) eager."""
    arch = get_registry("architecture").create("smallcnn", {"width": 4, "hidden": 16})
    x, y = _batch(8)
    for name, params in (("pgd-at", {"steps": 2, "random_start": False}),
                         ("uadat", {"steps": 2, "random_start": False, "sampling": False})):
        defense = get_registry("defense").create(name, params)
        torch.manual_seed(0)
        eager = NormalizedClassifier(arch.build(10, (3, 8, 8)), (0.5,) * 3, (0.25,) * 3)
        compiled_base = copy.deepcopy(eager)
        outs = []
        for model, stepped in ((eager, eager), (compiled_base, torch.compile(compiled_base))):
            opt = make_optimizer(model.train(), TrainConfig())
            outs.append((train_step(stepped.train(), defense, opt, x, y, THREAT).loss.detach(),
                         [p.detach() for p in model.parameters()]))
        (loss_e, w_e), (loss_c, w_c) = outs
        torch.testing.assert_close(loss_e, loss_c, rtol=1e-4, atol=1e-5, msg=name)
        for a, b in zip(w_e, w_c):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_evaluation_model_is_fp32_unless_asked() -> None:
    model = _bn_net().eval()
    assert evaluation_model(model, "fp32", CPU) is model
    wrapped = evaluation_model(model, "bf16", CPU)
    assert isinstance(wrapped, AutocastClassifier)
    assert wrapped(torch.rand(2, 3, 8, 8)).dtype == torch.float32


def test_engine_settings_leave_the_experiment_hash_alone() -> None:
    base = validate(resolve(None, {}))
    plan = plan_run(base)
    fast = plan_run(validate(resolve(None, {}, ["engine.channels_last=true", "engine.compile=true"])))
    bf16 = plan_run(validate(resolve(None, {}, ["train.precision=bf16"])))
    assert config_hash(plan.resolved) == config_hash(fast.resolved)
    assert config_hash(plan.resolved) != config_hash(bf16.resolved)
    # records from before the precision keys existed keep their hash
    old = {k: v for k, v in plan.resolved.items() if k != "engine"}
    old["train"] = {k: v for k, v in old["train"].items() if k != "precision"}
    old["eval"] = {k: v for k, v in old["eval"].items() if k != "precision"}
    assert config_hash(old) == config_hash(plan.resolved)


def _last_accuracy(results: Path) -> dict[str, float]:
    (path,) = results.glob("records/*/*/*.json")
    return json.loads(path.read_text())["checkpoints"]["last"]["accuracy"]


def test_bf16_and_channels_last_digits_runs_are_close_to_fp32(tmp_path: Path) -> None:
    """5 epochs of PGD-AT (PGD-5) on digits, the cosine schedule run to its end: clean and PGD-10
    accuracy within a few points of fp32 (seed-to-seed spread on digits is about 3 points;
    fp32 itself reaches about 65 / 25)."""
    acc = {}
    for name, flags in (("fp32", []), ("bf16", ["--precision", "bf16"]), ("channels-last", ["--channels-last"])):
        out = run_cli("run", "--epochs", "5", "--set", "defense.steps=5", "--attack", "pgd-10", "--set", "eval.checks=false",
                      "--set", "train.select=last", "--results-dir", str(tmp_path / name), "-q", *flags)
        assert out.returncode == 0, out.stderr
        acc[name] = _last_accuracy(tmp_path / name)
    assert acc["fp32"]["clean"] > 55 and acc["fp32"]["PGD-10"] > 18  # it learned something to compare
    for name in ("bf16", "channels-last"):
        assert abs(acc[name]["clean"] - acc["fp32"]["clean"]) < 4, (name, acc)
        assert abs(acc[name]["PGD-10"] - acc["fp32"]["PGD-10"]) < 5, (name, acc)


@pytest.mark.parametrize("defense", ["pgd-at", "trades", "mart", "uadat"])
def test_bf16_channels_last_step_agrees_with_fp32_on_the_cpu(defense: str) -> None:
    """CPU autocast keeps softmax and log in bf16 (CUDA's moves them to fp32): the
    defenses' probability terms must be fp32 themselves. The same check runs on CUDA
    in tests/gpu."""
    from numerics import assert_bf16_agrees

    assert_bf16_agrees(defense, torch.device("cpu"))
