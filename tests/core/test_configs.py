"""The shipped config files: they validate, cite their source, and hold the official settings."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from robench.core.config import resolve, validate
from robench.workflows.plans import plan_run

CIFAR10 = sorted((REPO / "configs" / "cifar10").glob("*.yaml"))

#: the official scripts' settings (each file cites its source)
OFFICIAL = {
    "pgd-at": {"eps": "8/255", "epochs": 110, "milestones": (100, 105), "weight_decay": 5e-4,
               "lr": 0.1, "select": "best", "defense": {"steps": 10, "random_start": True},
               "normalize": True},  # Bag of Tricks normalises with the CIFAR-10 mean and std
    "trades": {"eps": "0.031", "epochs": 76, "milestones": (74,), "weight_decay": 2e-4,
               "lr": 0.1, "select": "last",
               "defense": {"steps": 10, "step_size": 0.007, "beta": 6.0, "start_std": 0.001},
               "normalize": False},  # the official TRADES and MART code: raw [0, 1] inputs
    "mart-wrn-34-10": {"eps": "0.031", "epochs": 90, "milestones": (74, 89), "weight_decay": 7e-4,
                       "lr": 0.1, "select": "best",
                       "defense": {"steps": 10, "step_size": 0.007, "beta": 6.0, "start_std": 0.001},
                       "normalize": False},
    "mart-preact-resnet-18": {"eps": "0.031", "epochs": 120, "milestones": (74, 89, 99),
                              "weight_decay": 3.5e-3, "lr": 0.01, "select": "best",
                              "defense": {"steps": 10, "step_size": 0.007, "beta": 5.0, "start_std": 0.001},
                              "normalize": False},
}


def _expected(path: Path) -> dict:
    stem = path.stem
    return OFFICIAL.get(stem) or OFFICIAL[stem.split("-wrn")[0].split("-preact")[0]]


def test_one_preset_per_baseline_and_architecture() -> None:
    names = {p.stem for p in CIFAR10}
    assert names == {f"{d}-{a}" for d in ("pgd-at", "trades", "mart") for a in ("wrn-34-10", "preact-resnet-18")}


@pytest.mark.parametrize("path", CIFAR10, ids=lambda p: p.stem)
def test_cifar10_preset_holds_the_official_settings(path: Path, tmp_path: Path) -> None:
    text = path.read_text()
    assert "github.com/" in text or "arXiv" in text  # cites its source
    plan = plan_run(validate(resolve(path, {"results_dir": str(tmp_path), "runs_dir": str(tmp_path)})))
    want = _expected(path)
    train = plan.config.train
    assert plan.names["data"] == "cifar10" and plan.names["arch"] in path.stem
    assert plan.names["defense"] == path.stem.split("-wrn")[0].split("-preact")[0]
    assert plan.threat.norm == "Linf" and plan.threat.eps == want["eps"]
    assert (train.epochs, train.milestones, train.schedule) == (want["epochs"], want["milestones"], "piecewise")
    assert (train.lr, train.weight_decay, train.momentum, train.batch_size) == (want["lr"], want["weight_decay"], 0.9, 128)
    assert train.gamma == 0.1 and train.select == want["select"]
    params = vars(plan.defense.params)
    assert {k: params[k] for k in want["defense"]} == want["defense"]
    if plan.names["defense"] == "pgd-at":
        assert params["step_size"] == pytest.approx(2 / 255, abs=1e-15)
    assert [e.attack.label() for e in plan.suite] == ["FGSM", "PGD-20", "CW-20", "AutoAttack"]
    assert plan.config.normalize is want["normalize"]
    assert plan.resolved["data"].get("normalize", True) is want["normalize"]  # recorded when off


# ------------------------------------------------------------------- Fashion-MNIST, MNIST
FASHION = sorted((REPO / "configs" / "fashion-mnist").glob("*.yaml"))
DEFENSES = ("standard", "pgd-at", "trades", "mart", "uadat")


def test_fashion_mnist_has_every_defense_on_both_architectures() -> None:
    assert {p.stem for p in FASHION} == {f"{d}-{a}" for d in DEFENSES for a in ("trades-smallcnn", "preact-resnet-18")}


@pytest.mark.parametrize("path", FASHION, ids=lambda p: p.stem)
def test_fashion_mnist_configs_plan_the_run_they_name(path: Path, tmp_path: Path) -> None:
    text = path.read_text()
    assert "Expected GPU time" in text and "FLOP" in text  # an estimate until a GPU measures it
    plan = plan_run(validate(resolve(path, {"results_dir": str(tmp_path), "runs_dir": str(tmp_path)})))
    defense, arch = next((d, path.stem[len(d) + 1:]) for d in DEFENSES if path.stem.startswith(d + "-"))
    assert (plan.names["data"], plan.names["defense"], plan.names["arch"]) == ("fashion-mnist", defense, arch)
    assert plan.threat.norm == "Linf" and plan.threat.eps == "0.1"
    assert plan.config.eval.n_eval >= 2000 and plan.config.train.epochs == 10
    assert [e.attack.label() for e in plan.suite] == ["FGSM", "PGD-20", "CW-20", "AutoAttack"]
    assert plan.dataset.params.random_crop == 0  # no augmentation, the usual setting


def test_mnist_config_holds_trades_official_settings(tmp_path: Path) -> None:
    path = REPO / "configs" / "mnist" / "trades-trades-smallcnn.yaml"
    assert "github.com/yaodongyu/TRADES" in path.read_text()
    plan = plan_run(validate(resolve(path, {"results_dir": str(tmp_path), "runs_dir": str(tmp_path)})))
    train = plan.config.train
    assert plan.names == {"data": "mnist", "arch": "trades-smallcnn", "defense": "trades"}
    assert plan.threat.eps == "0.3" and plan.dataset.mean == (0.0,) and plan.dataset.std == (1.0,)
    assert (train.epochs, train.schedule, train.milestones, train.gamma) == (100, "piecewise", (54,), 0.1)
    assert (train.lr, train.momentum, train.weight_decay, train.batch_size, train.select) == (0.01, 0.9, 0.0, 128, "last")
    params = vars(plan.defense.params)
    assert {k: params[k] for k in ("beta", "steps", "step_size", "start_std")} == {
        "beta": 1.0, "steps": 40, "step_size": 0.01, "start_std": 0.001}
    assert [e.attack.label() for e in plan.suite] == ["FGSM", "PGD-40", "CW-20", "AutoAttack"]
