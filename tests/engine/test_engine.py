"""Training and evaluation loops on real digits data."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robench.config import resolve, validate
from robench.engine.evaluate import evaluate, subset_indices
from robench.registry import get_registry
from robench.run import build_model, execute, plan_run

FAST = ["train.epochs=2", "attacks=[pgd-3]", "eval.n_eval=120"]


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


class Counting:
    """Wraps a real attack plugin and records how many points each call sees."""

    def __init__(self, attack, fail_after: int | None = None) -> None:
        self.attack, self.calls, self.fail_after = attack, [], fail_after
        self.whole_set = attack.whole_set

    def label(self) -> str:
        return self.attack.label()

    def flags(self) -> list[str]:
        return self.attack.flags()

    def still_correct(self, model, x, y, threat, generator=None, state_path=None):
        self.calls.append(len(y))
        if self.fail_after is not None and len(self.calls) > self.fail_after:
            raise KeyboardInterrupt  # a crash in the middle of the suite
        return self.attack.still_correct(model, x, y, threat, generator=generator, state_path=state_path)


def _untrained():
    plan = plan_run(validate(resolve(None, None, ["defense.name=standard"])))
    torch.manual_seed(0)
    return plan, build_model(plan), plan.dataset.load(None, 0)


def test_later_attacks_only_see_robust_points() -> None:
    plan, model, splits = _untrained()  # untrained: accuracy near chance, FGSM breaks some
    registry = get_registry("attack")
    fgsm, pgd = Counting(registry.create("fgsm")), Counting(registry.create("pgd-20"))
    result = evaluate(model, splits.test, [fgsm, pgd], plan.threat, batch_size=80, device=torch.device("cpu"))
    n_clean = round(result.accuracy["clean"] * result.n / 100)
    n_fgsm = round(result.accuracy["FGSM"] * result.n / 100)
    assert fgsm.calls == [n_clean] and pgd.calls == [n_fgsm] and n_fgsm < n_clean
    assert list(result.accuracy) == ["clean", "FGSM", "PGD-20", "worst case"]
    assert result.accuracy["worst case"] == result.accuracy["PGD-20"] <= result.accuracy["FGSM"]
    assert int(result.robust.sum()) == round(result.accuracy["PGD-20"] * result.n / 100)


def test_an_interrupted_evaluation_resumes_where_it_stopped(tmp_path: Path) -> None:
    plan, model, splits = _untrained()
    registry = get_registry("attack")
    cpu = torch.device("cpu")
    reference = evaluate(model, splits.test, [registry.create("fgsm"), registry.create("pgd-5")],
                         plan.threat, batch_size=8, device=cpu, seed=3)

    state = tmp_path / "state"
    fgsm, pgd = Counting(registry.create("fgsm")), Counting(registry.create("pgd-5"), fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, splits.test, [fgsm, pgd], plan.threat, batch_size=8, device=cpu, seed=3, state_dir=state)
    assert (state / "suite.json").is_file()  # FGSM's flags were saved before the crash

    fgsm2, pgd2 = Counting(registry.create("fgsm")), Counting(registry.create("pgd-5"))
    resumed = evaluate(model, splits.test, [fgsm2, pgd2], plan.threat, batch_size=8, device=cpu, seed=3,
                       state_dir=state)
    assert fgsm2.calls == [] and pgd2.calls  # FGSM restored, PGD ran
    assert resumed.accuracy == reference.accuracy  # per-attack seeds: same as uninterrupted
    assert not state.exists()  # state is removed once the evaluation completes


def test_subset_is_fixed_and_sorted() -> None:
    a, b = subset_indices(100, 10), subset_indices(100, 10)
    assert torch.equal(a, b) and len(a) == 10 and torch.equal(a, a.sort().values)
    assert len(subset_indices(5, 10)) == 5
