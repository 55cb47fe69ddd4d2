"""Real short training on digits: the defenses do what their papers say they do.

Eight epochs of each defense on the embedded digits data (smallcnn, seed 0), its
adversary PGD-5 (half the papers' ten steps: the same direction of every effect below,
in half the time), then clean and PGD-20 accuracy on the 360 test images. About a
minute on one core.
"""
from __future__ import annotations

import pytest
import torch

from robench.core.config import TrainConfig, resolve, validate
from robench.core.registry import get_registry
from robench.engine.train import train
from robench.evaluation.sequential import evaluate
from robench.workflows.plans import build_model, plan_run

EPOCHS = 8
#: the training adversary's PGD steps
STEPS = 5


@pytest.fixture(scope="module")
def trained() -> dict[str, dict[str, float]]:
    plan = plan_run(validate(resolve(None, {"defense": {"name": "standard"}})))
    splits = plan.dataset.load(None, 0)
    attack = get_registry("attack").create("pgd-20", {})
    results = {}
    for label, name, params in [
        ("standard", "standard", {}),
        ("pgd-at", "pgd-at", {"steps": STEPS}),
        ("mart", "mart", {"steps": STEPS}),
        ("trades", "trades", {"beta": 6.0, "steps": STEPS}),
        ("trades beta=0.2", "trades", {"beta": 0.2, "steps": STEPS}),
    ]:
        torch.manual_seed(0)
        model = build_model(plan)
        train(model, get_registry("defense").create(name, params), splits.train, plan.threat,
              TrainConfig(epochs=EPOCHS, batch_size=64, lr=0.1), device=torch.device("cpu"),
              generator=torch.Generator().manual_seed(0))
        result = evaluate(model.eval(), splits.test, [attack], plan.threat, batch_size=512,
                          device=torch.device("cpu"), seed=0)
        results[label] = {"clean": result.accuracy["clean"], "pgd": result.accuracy["PGD-20"]}
    return results


@pytest.mark.parametrize("defense", ["pgd-at", "mart", "trades"])
def test_adversarial_training_lifts_pgd_accuracy_well_above_standard(trained, defense):
    assert trained["standard"]["clean"] > 90.0 and trained["standard"]["pgd"] < 10.0
    assert trained[defense]["pgd"] > trained["standard"]["pgd"] + 25.0, trained


def test_larger_trades_beta_trades_clean_accuracy_for_robustness(trained):
    """The TRADES paper's trend (its Table 5): beta up, robust accuracy up, clean down."""
    small, large = trained["trades beta=0.2"], trained["trades"]
    assert large["pgd"] > small["pgd"] + 10.0, trained
    assert large["clean"] < small["clean"], trained
