"""Training and evaluation loops on real digits data."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from robench.core.config import resolve, validate
from robench.core.registry import get_registry
from robench.engine.checkpoint import load_checkpoint
from robench.evaluation.sequential import evaluate, subset_indices
from robench.workflows.plans import build_model, plan_run
from robench.workflows.run import execute

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


def test_run_folder_holds_checkpoints_and_epoch_log(tmp_path: Path) -> None:
    plan = plan_run(validate(resolve(None, {"defense": {"name": "pgd-at", "steps": 2}},
                                     [*FAST, f"results_dir={tmp_path}", "train.epochs=3"])))
    rec = execute(plan).record
    log = [json.loads(line) for line in (plan.run_dir / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3]
    assert [e["val_pgd"] for e in log] == [h["val_pgd"] for h in rec.history]
    best_epoch = rec.checkpoints["best"]["epoch"]
    assert [e["epoch"] for e in log if e["best"]] == [best_epoch]
    assert max(e["val_pgd"] for e in log) == log[best_epoch - 1]["val_pgd"]
    best, last = load_checkpoint(plan.run_dir / "best.pt"), load_checkpoint(plan.run_dir / "last.pt")
    assert (best.epoch, last.epoch, best.train_state) == (best_epoch, 3, None)
    assert last.train_state is not None and len(last.train_state["history"]) == 3
    assert best.config == last.config == rec.config and best.run_id == rec.run_id
    assert not list(plan.run_dir.glob("eval-state*"))  # evaluation state removed when done


def test_without_a_validation_split_the_last_checkpoint_is_reported(tmp_path: Path) -> None:
    plan = plan_run(validate(resolve(None, {"defense": {"name": "pgd-at", "steps": 2}},
                                     [*FAST, f"results_dir={tmp_path}", "data.val_size=0", "train.epochs=1"])))
    rec = execute(plan).record
    assert set(rec.checkpoints) == {"last"} and rec.selected == "last"
    assert rec.history[0]["val_pgd"] is None and "no validation split" in rec.notes[0]
    assert not (plan.run_dir / "best.pt").exists() and (plan.run_dir / "last.pt").exists()


class Counting:
    """Wraps a real attack plugin and records how many points each call sees."""

    def __init__(self, attack, fail_after: int | None = None) -> None:
        self.attack, self.calls, self.fail_after = attack, [], fail_after
        self.whole_set = attack.whole_set

    def label(self) -> str:
        return self.attack.label()

    def evaluate_points(self, model, x, y, threat, generator=None, state_path=None):
        self.calls.append(len(y))
        if self.fail_after is not None and len(self.calls) > self.fail_after:
            raise KeyboardInterrupt  # a crash in the middle of the suite
        return self.attack.evaluate_points(model, x, y, threat, generator=generator, state_path=state_path)


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


def test_eps_warmup_reaches_the_defense_and_the_log() -> None:
    from robench.api import Defense, LossOutput
    from robench.core.config import TrainConfig
    from robench.engine.train import train

    seen: list[str] = []

    class Recording(Defense):
        def loss(self, model, x, y, threat):
            seen.append(threat.eps)
            logits = model(x)
            return LossOutput(torch.nn.functional.cross_entropy(logits, y), logits)

    plan = plan_run(validate(resolve(None, {"defense": {"name": "standard"}})))
    split = plan.dataset.load(None, 0).train
    steps = -(-len(split) // 256)
    result = train(build_model(plan), Recording(), split, plan.threat,
                   TrainConfig(epochs=3, batch_size=256, eps_warmup_epochs=2),
                   device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    ramp = 2 * steps
    assert seen[: ramp] == [str(Fraction(3, 16) * Fraction(k + 1, ramp)) for k in range(ramp - 1)] + ["3/16"]
    assert set(seen[ramp:]) == {"3/16"}
    assert [h.eps for h in result.history] == [str(Fraction(3, 16) * Fraction(steps, ramp)), "3/16", "3/16"]


def test_validation_leaves_trainings_random_streams_alone() -> None:
    """PGD-AT draws its attack's random starts from torch's global generator, validation
    from a generator of its own per epoch: validating on 20 or 60 images between the two
    epochs trains the same weights."""
    from robench.api import TensorSplit
    from robench.core.config import TrainConfig
    from robench.engine.train import train

    plan = plan_run(validate(resolve(None, {"defense": {"name": "pgd-at", "steps": 2}})))
    splits = plan.dataset.load(None, 0)
    train_part = TensorSplit(splits.train.x[:128], splits.train.y[:128])
    defense = get_registry("defense").create("pgd-at", {"steps": 2})

    def trained(n_val: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = build_model(plan)
        result = train(model, defense, train_part, plan.threat, TrainConfig(epochs=2, batch_size=64, val_steps=2),
                       device=torch.device("cpu"), generator=torch.Generator().manual_seed(0), seed=4,
                       val_split=TensorSplit(splits.test.x[:n_val], splits.test.y[:n_val]))
        assert all(h.val_pgd is not None for h in result.history)
        return model.state_dict()

    short, long = trained(20), trained(60)
    assert all(torch.equal(short[k], long[k]) for k in short)


def test_a_warning_belongs_to_the_evaluation_that_raised_it() -> None:
    """One AutoAttack suite object evaluates two models: the first outputs probabilities
    (AutoAttack's sanity check warns), the second logits. Only the first is flagged, as
    when `robench run` evaluates the last and then the best checkpoint with one suite."""
    plan, model, splits = _untrained()
    attack = get_registry("attack").create("autoattack", {"version": "custom", "attacks": ["apgd-ce"]})
    probabilities = torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval()
    cpu = torch.device("cpu")
    first = evaluate(probabilities, splits.test, [attack], plan.threat, batch_size=80, device=cpu, n_eval=40)
    second = evaluate(model, splits.test, [attack], plan.threat, batch_size=80, device=cpu, n_eval=40)
    assert first.flags and all(f.startswith("APGD-CE: ") for f in first.flags), first.flags
    assert any("probability" in f for f in first.flags), first.flags
    assert second.flags == []
