"""Plans: a training run's and an evaluation's, and a run that leaves its plan as given."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest

from robench.api.errors import PluginLoadError, UnknownPluginError
from robench.core.config import LOGGER_SECTION, resolve, validate
from robench.engine.machine import describe_machine
from robench.workflows.plans import ProtocolPlan, RunPlan, build_model, plan_protocol, plan_run
from robench.workflows.run import execute

TINY = ["train.epochs=1", "defense.steps=1", "attacks=[fgsm]", "eval.n_eval=40"]


def test_execute_leaves_the_plan_it_was_given_unchanged(tmp_path: Path) -> None:
    """What the process group decides goes into the executing copy; the caller's plan is
    frozen and keeps every field it had, and the record names the machine it ran on."""
    plan = plan_run(validate(resolve(None, None, [
        *TINY, f"results_dir={tmp_path / 'results'}", f"runs_dir={tmp_path / 'runs'}"])))
    given = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)}
    contents = copy.deepcopy((plan.resolved, plan.names))
    outcome = execute(plan)
    assert outcome is not None and outcome.run_dir == plan.run_dir and outcome.record.run_id == plan.run_id
    assert [k for k, v in given.items() if getattr(plan, k) is not v] == []
    assert (plan.resolved, plan.names) == contents
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.run_id = "another"  # type: ignore[misc]
    assert outcome.record.machine == describe_machine(plan.device)
    assert outcome.record.device.startswith("cpu (")  # the one-line device stays as it was


def test_an_evaluation_plan_builds_no_defense() -> None:
    """``robench eval`` evaluates a model: a defense no plugin provides does not stop it,
    and its plan has no defense at all, while a training run's refuses to start."""
    config = validate(resolve(None, {"defense": {"name": "no-such-defense"}}, TINY))
    plan = plan_protocol(config)
    assert type(plan) is ProtocolPlan and not hasattr(plan, "defense") and "defense" not in plan.resolved
    assert build_model(plan).training  # an architecture plugin's network, built
    with pytest.raises(UnknownPluginError, match="no-such-defense"):
        plan_run(config)
    run = plan_run(validate(resolve(None, None, TINY)))
    assert isinstance(run, RunPlan) and run.defense.selection_metric in ("val_pgd", "val_clean")
    shared = [k for k in run.resolved if k not in ("defense", LOGGER_SECTION)]
    assert {k: plan.resolved[k] for k in shared} == {k: run.resolved[k] for k in shared}  # one builder for both


def test_an_evaluation_plan_may_build_no_architecture() -> None:
    """A network made by the user's own code (``robench eval --model``) needs no architecture plugin."""
    plan = plan_protocol(validate(resolve(None, None, TINY)), arch=False)
    assert plan.arch is None and "arch" not in plan.resolved and "arch" not in plan.names
    with pytest.raises(PluginLoadError, match="no architecture"):
        build_model(plan)
