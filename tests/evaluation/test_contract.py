"""The evaluation checks what an attack returns: adversaries inside the threat model,
within a float tolerance, and the model's verdict on them, not the attack's claim."""
from __future__ import annotations

import pytest
import torch

from robench.api import Attack, AttackOutcome
from robench.api.errors import PluginLoadError
from robench.api.threat import ThreatModel
from robench.core.registry import get_registry
from robench.evaluation.contract import TOLERANCE
from robench.evaluation.sequential import evaluate


class Offset(Attack):
    """Moves every input by ``offset`` along one fixed direction (sign for Linf, unit for L2)."""

    def __init__(self, offset: float, norm: str) -> None:
        super().__init__()
        self.offset, self.norm = offset, norm

    def perturb(self, model, x, y, threat, generator=None):
        direction = torch.where(x > 0.5, -1.0, 1.0)  # towards the box's middle: never leaves [0, 1]
        if self.norm == "L2":
            direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        return (x.double() + self.offset * direction.double()).float()


class WholeSet(Attack):
    """Decides per point itself and returns adversaries ``x + shift`` with the given claim."""

    whole_set = True

    def __init__(self, shift: float, claim_broken: bool) -> None:
        super().__init__()
        self.shift, self.claim_broken = shift, claim_broken

    def evaluate_points(self, model, x, y, threat, generator=None, state_path=None):
        flags = torch.full((len(y),), not self.claim_broken, dtype=torch.bool)
        return AttackOutcome(flags, adversaries=(x + self.shift).clamp(0, 1))


def _evaluate(standard_digits, attack, threat):
    _, model, test = standard_digits
    return evaluate(model, test, [attack], threat, batch_size=64, device=torch.device("cpu"), n_eval=64)


@pytest.mark.parametrize(("norm", "eps"), [("Linf", "1/16"), ("L2", "0.5")])
def test_adversaries_within_the_tolerance_pass_and_beyond_it_fail(standard_digits, norm: str, eps: str) -> None:
    threat = ThreatModel(norm, eps)
    result = _evaluate(standard_digits, Offset(threat.value + TOLERANCE / 2, norm), threat)
    assert result.accuracy["Offset"] <= result.accuracy["clean"]
    with pytest.raises(PluginLoadError, match=rf"perturb\(\) returned adversaries outside the threat model: "
                                              rf"\d+ of \d+ leave the {norm} ball of eps {eps}"):
        _evaluate(standard_digits, Offset(threat.value + 2 * TOLERANCE, norm), threat)


class Shift(Attack):
    """Returns ``x + shift`` unclamped, through ``evaluate_points`` as a whole-set attack does."""

    whole_set = True

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def evaluate_points(self, model, x, y, threat, generator=None, state_path=None):
        x_adv = x + self.shift
        return AttackOutcome(model(x_adv).argmax(1) == y, adversaries=x_adv)


def test_the_box_is_checked_with_the_same_tolerance(standard_digits) -> None:
    threat = ThreatModel("Linf", "1/16")
    _, _, test = standard_digits
    assert test.images().min() == 0  # digits have black pixels: a shift down leaves the box
    _evaluate(standard_digits, Shift(-TOLERANCE / 2), threat)
    with pytest.raises(PluginLoadError, match=r"evaluate_points\(\) returned adversaries outside .* "
                                              r"leave the \[0, 1\] box \(values from -2e-05"):
        _evaluate(standard_digits, Shift(-2 * TOLERANCE), threat)


def test_nan_adversaries_are_refused(standard_digits) -> None:
    class NaN(Attack):
        def perturb(self, model, x, y, threat, generator=None):
            return torch.full_like(x, float("nan"))

    with pytest.raises(PluginLoadError, match=r"leave the \[0, 1\] box"):
        _evaluate(standard_digits, NaN(), ThreatModel("Linf", "1/16"))


def test_the_models_verdict_on_the_adversaries_counts_not_the_claim(standard_digits) -> None:
    threat = ThreatModel("Linf", "1/16")
    claims = _evaluate(standard_digits, WholeSet(0.0, claim_broken=True), threat)
    assert claims.accuracy["WholeSet"] == claims.accuracy["clean"] > 50  # nothing fooled: nothing broken
    real = get_registry("attack").create("pgd-10")  # its adversaries, claimed robust, still count

    class Modest(Attack):
        whole_set = True

        def evaluate_points(self, model, x, y, threat, generator=None, state_path=None):
            x_adv = real.perturb(model, x, y, threat, generator=generator)
            return AttackOutcome(torch.ones(len(y), dtype=torch.bool), adversaries=x_adv)

    modest = _evaluate(standard_digits, Modest(), threat)
    honest = _evaluate(standard_digits, real, threat)
    assert modest.accuracy["Modest"] == honest.accuracy["PGD-10"] < honest.accuracy["clean"]
