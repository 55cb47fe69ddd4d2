"""Gradient masking must raise flags, and honest models must pass the checks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from robench.core.config import EvalConfig, PluginChoice
from robench.evaluation.checks import eps_sweep, sanity_checks
from robench.evaluation.protocol import create_suite, run_protocol

CPU = torch.device("cpu")


class RoundsItsInput(nn.Module):
    """A classic masked-gradient 'defense': quantise the input; d(round)/dx = 0."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * 16) / 16)


@pytest.fixture
def digits(standard_digits):
    return standard_digits


def _protocol(model, test, threat):
    suite = create_suite([PluginChoice("fgsm", {}), PluginChoice("apgd-t", {})])
    return run_protocol(model, test, suite, threat, EvalConfig(n_eval=120, check_n=120), device=CPU, seed=0)


def test_honest_model_passes_every_check(digits) -> None:
    plan, model, test = digits
    outcome = _protocol(model, test, plan.threat)
    assert [c.name for c in outcome.checks] == ["eps0-equals-clean", "monotone-in-eps", "large-eps-breaks"]
    assert all(c.passed for c in outcome.checks), outcome.checks
    assert outcome.flags == []
    section = outcome.record_section(create_suite([PluginChoice("fgsm", {}), PluginChoice("apgd-t", {})]))
    assert section["reliable"] is True and section["flags"] == []


def test_masked_gradients_raise_flags_instead_of_passing(digits) -> None:
    plan, model, test = digits
    masked = RoundsItsInput(model).eval()
    outcome = _protocol(masked, test, plan.threat)
    failed = {c.name for c in outcome.checks if not c.passed}
    assert "large-eps-breaks" in failed  # PGD cannot move without a gradient
    assert any("zero gradient" in f for f in outcome.flags)  # AutoAttack's own check, captured
    assert any(f.startswith("robench check large-eps-breaks failed") for f in outcome.flags)
    # it looks *more* robust than the honest model: exactly why the flags matter
    honest = _protocol(model, test, plan.threat)
    assert outcome.result.accuracy["worst case"] > honest.result.accuracy["worst case"]


def test_a_randomised_model_fails_the_eps0_check(digits) -> None:
    plan, model, test = digits

    class Noisy(nn.Module):
        def forward(self, x):
            return model(x) + 3.0 * torch.randn(x.shape[0], 10)

    torch.manual_seed(1)
    checks = sanity_checks(Noisy(), test, torch.arange(120), plan.threat, batch_size=512, device=CPU)
    assert not checks[0].passed and checks[0].name == "eps0-equals-clean"


def test_sweep_is_exact_and_falls_with_eps(digits) -> None:
    plan, model, test = digits
    points = eps_sweep(model, test, torch.arange(100), plan.threat, batch_size=512, device=CPU)
    assert [p.eps for p in points] == ["0", "3/64", "3/32", "9/64", "3/16", "15/64", "9/32", "3/8"]
    accuracies = [p.accuracy for p in points]
    assert accuracies == sorted(accuracies, reverse=True) and accuracies[-1] < accuracies[0]
