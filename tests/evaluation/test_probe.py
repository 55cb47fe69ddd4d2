"""The suite is probed on a few points before any work starts, without side effects."""
from __future__ import annotations

import pytest
import torch

from robench.api import Attack
from robench.api.errors import PluginLoadError
from robench.api.threat import ThreatModel
from robench.core.registry import get_registry
from robench.evaluation.probe import PROBE_POINTS, probe_suite

BUILTIN_SUITE = ("fgsm", "pgd-10", "cw-10", "apgd-ce", "apgd-t", "autoattack")


@pytest.mark.parametrize(("norm", "eps", "suite"), [
    ("Linf", "1/16", BUILTIN_SUITE),
    ("L2", "0.5", BUILTIN_SUITE[:-1]),  # AutoAttack's Square alone takes 10 s here; Linf covers it
])
def test_every_builtin_attack_passes_the_probe_and_leaves_no_trace(
    standard_digits, norm: str, eps: str, suite: tuple[str, ...]
) -> None:
    _, model, test = standard_digits
    attacks = [get_registry("attack").create(name) for name in suite]
    model.train()
    rng = torch.get_rng_state()
    try:
        probe_suite(model, test, attacks, ThreatModel(norm, eps), torch.device("cpu"))  # AutoAttack reseeds torch
        assert torch.equal(torch.get_rng_state(), rng)  # a probed run trains as an unprobed one
        assert model.training  # the mode it was given back
    finally:
        model.eval()


class Counts(Attack):
    """Sees how many points the probe hands it and which labels."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, bool]] = []

    def perturb(self, model, x, y, threat, generator=None):
        self.seen.append((len(y), bool((model(x).argmax(1) == y).all())))
        return x.clone()


def test_the_probe_attacks_points_the_model_classifies_as_labelled() -> None:
    """Labels are the model's own predictions, so even an untrained model's points are
    attacked (an attack skips points that are misclassified already)."""
    from robench.core.config import resolve, validate
    from robench.workflows.plans import build_model, plan_run

    plan = plan_run(validate(resolve(None, None, ["defense.name=standard"])))
    torch.manual_seed(0)
    model, test = build_model(plan), plan.dataset.load(None, 0).test
    counts = Counts()
    probe_suite(model, test, [counts], plan.threat, torch.device("cpu"))
    assert counts.seen == [(PROBE_POINTS, True)]


def test_an_attack_that_crashes_is_named_in_one_line(standard_digits) -> None:
    class Crashes(Attack):
        def perturb(self, model, x, y, threat, generator=None):
            raise ValueError("needs\na GPU")

    _, model, test = standard_digits
    with pytest.raises(PluginLoadError) as info:
        probe_suite(model, test, [Crashes()], ThreatModel("Linf", "1/16"), torch.device("cpu"))
    message = str(info.value)
    assert "Crashes" in message and "perturb() failed on a probe of 4 points: ValueError: needs a GPU" in message
    assert "\n" not in message
