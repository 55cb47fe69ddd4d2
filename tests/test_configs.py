"""The shipped config files: they validate, cite their source, and hold the official settings."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO
from robench.config import resolve, validate
from robench.run import plan_run

CIFAR10 = sorted((REPO / "configs" / "cifar10").glob("*.yaml"))

#: the official scripts' settings (each file cites its source)
OFFICIAL = {
    "pgd-at": {"eps": "8/255", "epochs": 110, "milestones": (100, 105), "weight_decay": 5e-4,
               "lr": 0.1, "select": "best", "defense": {"steps": 10, "random_start": True}},
    "trades": {"eps": "0.031", "epochs": 76, "milestones": (74,), "weight_decay": 2e-4,
               "lr": 0.1, "select": "last",
               "defense": {"steps": 10, "step_size": 0.007, "beta": 6.0, "start_std": 0.001}},
    "mart-wrn-34-10": {"eps": "0.031", "epochs": 90, "milestones": (74, 89), "weight_decay": 7e-4,
                       "lr": 0.1, "select": "best",
                       "defense": {"steps": 10, "step_size": 0.007, "beta": 6.0, "start_std": 0.001}},
    "mart-preact-resnet-18": {"eps": "0.031", "epochs": 120, "milestones": (74, 89, 99),
                              "weight_decay": 3.5e-3, "lr": 0.01, "select": "best",
                              "defense": {"steps": 10, "step_size": 0.007, "beta": 5.0, "start_std": 0.001}},
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
