"""Training and evaluation loops on real digits data."""
from __future__ import annotations

from pathlib import Path

import torch

from robench.config import resolve, validate
from robench.engine.evaluate import evaluate, subset_indices
from robench.run import build_model, execute, plan_run

FAST = ["train.epochs=2", "attack.steps=3", "eval.n_eval=120"]


def _run(results: Path, *extra: str, defense: dict | None = None):
    defense = defense or {"name": "pgd-at", "steps": 2}
    plan = plan_run(validate(resolve(None, {"defense": defense}, [*FAST, f"results_dir={results}", *extra])))
    return execute(plan).record


def test_cpu_runs_are_deterministic(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", "seed=5")
    b = _run(tmp_path / "b", "seed=5")
    c = _run(tmp_path / "c", "seed=6")
    assert a.accuracy == b.accuracy
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert [h["loss"] for h in a.history] != [h["loss"] for h in c.history]
    assert a.config_hash == c.config_hash and a.run_id != b.run_id


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    rec = _run(tmp_path, "train.epochs=4", defense={"name": "standard"})
    losses = [h["loss"] for h in rec.history]
    assert losses[-1] < losses[0] * 0.5
    assert rec.accuracy["clean"] > 80.0 and rec.eval["n"] == 120


def test_later_attacks_only_see_robust_points(tmp_path: Path) -> None:
    plan = plan_run(validate(resolve(None, None, ["defense.name=standard"])))
    model = build_model(plan)  # untrained: accuracy near chance
    splits = plan.dataset.load(None, 0)
    calls: list[int] = []

    class Counting(type(plan.attack)):
        def perturb(self, model, x, y, threat, generator=None):
            calls.append(len(y))
            return super().perturb(model, x, y, threat, generator)

    attack = Counting(plan.attack.params)
    result = evaluate(model, splits.test, [attack, attack], plan.threat, batch_size=1000,
                      device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    n_clean = round(result.accuracy["clean"] * result.n / 100)
    n_first = round(result.accuracy["PGD-20"] * result.n / 100)
    assert calls[0] == n_clean and (len(calls) == 1 or calls[1] <= n_first)
    assert list(result.accuracy) == ["clean", "PGD-20"]  # same label: one (worst-case) entry


def test_subset_is_fixed_and_sorted() -> None:
    a, b = subset_indices(100, 10), subset_indices(100, 10)
    assert torch.equal(a, b) and len(a) == 10 and torch.equal(a, a.sort().values)
    assert len(subset_indices(5, 10)) == 5
