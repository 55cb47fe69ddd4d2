"""Attack plugins on a really trained digits model: budgets, strength order, AutoAttack."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from robench.api.threat import ThreatModel
from robench.core.registry import get_registry
from robench.evaluation.sequential import evaluate

ALL = ("fgsm", "pgd", "cw", "apgd-ce", "apgd-t", "autoattack")
SMALL = {"pgd": {"steps": 10}, "cw": {"steps": 10}}


@pytest.fixture
def trained(standard_digits):
    _, model, test = standard_digits
    return model, test


def _attack(name: str, **params):
    return get_registry("attack").create(name, {**SMALL.get(name, {}), **params})


@pytest.mark.parametrize("norm, eps", [("Linf", "1/16"), ("L2", "0.5")])
@pytest.mark.parametrize("name", ALL)
def test_attacks_stay_in_the_ball_and_the_box(trained, name: str, norm: str, eps: str) -> None:
    model, test = trained
    threat = ThreatModel(norm, eps)
    x, y = test.images(slice(0, 16)), test.y[:16]
    x_adv = _attack(name).perturb(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "Linf" else delta.norm(dim=1)
    assert (size <= threat.value + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (size > 0).any()  # it did perturb
    assert not model.training and all(p.requires_grad for p in model.parameters())  # restored


def test_strength_order_and_autoattack_really_runs(trained, caplog: pytest.LogCaptureFixture) -> None:
    model, test = trained
    threat = ThreatModel("Linf", "1/16")
    acc = {}
    for name in ("fgsm", "pgd", "autoattack"):
        attack = get_registry("attack").create(name, {"steps": 20} if name == "pgd" else {})
        with caplog.at_level(logging.INFO, logger="auto-attack"):
            result = evaluate(model, test, [attack], threat, batch_size=500,
                              device=torch.device("cpu"), n_eval=30)
        acc["clean"], acc[name] = result.accuracy["clean"], result.accuracy[attack.label()]
    assert acc["autoattack"] <= acc["pgd"] <= acc["fgsm"] <= acc["clean"]
    assert acc["clean"] > 80 and acc["fgsm"] < acc["clean"]
    assert any(r.name == "auto-attack" for r in caplog.records)  # pyautoattack itself ran


def test_autoattack_is_seeded(trained) -> None:
    model, test = trained
    x, y = test.images(slice(0, 12)), test.y[:12]
    threat = ThreatModel("Linf", "1/16")
    a = _attack("apgd-ce", seed=3).perturb(model, x, y, threat)
    b = _attack("apgd-ce", seed=3).perturb(model, x, y, threat)
    assert torch.equal(a, b)


def test_cw_margin_is_best_wrong_minus_true() -> None:
    from robench.api.perturb import margin_loss

    logits = torch.tensor([[2.0, 5.0, 1.0], [0.0, -1.0, 3.0]])
    y = torch.tensor([1, 0])
    assert margin_loss(y)(logits).item() == pytest.approx((2.0 - 5.0) + (3.0 - 0.0))


def test_autoattack_params_are_checked() -> None:
    from robench.api.errors import ConfigError

    with pytest.raises(ConfigError, match="custom"):
        get_registry("attack").create("autoattack", {"version": "custom"})
    with pytest.raises(ConfigError, match="unknown"):
        get_registry("attack").create("autoattack", {"version": "custom", "attacks": ["apgd-xx"]})
    assert get_registry("attack").create("apgd-t").label() == "APGD-T"
    assert get_registry("attack").create("autoattack").label() == "AutoAttack"


class _Interrupted(Exception):
    pass


class _DiesAfter(torch.nn.Module):
    """The trained model, but the process 'crashes' after ``calls`` forward passes."""

    def __init__(self, net: torch.nn.Module, calls: int) -> None:
        super().__init__()
        self.net, self.left = net, calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.left -= 1
        if self.left < 0:
            raise _Interrupted
        return self.net(x)


def test_autoattack_resumes_from_its_state_file(trained, tmp_path) -> None:
    model, test = trained
    threat = ThreatModel("Linf", "1/16")
    x, y = test.images(slice(0, 40)), test.y[:40]
    suite = {"version": "custom", "attacks": ["apgd-ce", "apgd-t"]}
    full = _attack("autoattack", **suite).evaluate_points(model, x, y, threat)
    one_call = _attack("autoattack", **suite).perturb(model, x, y, threat)
    with torch.no_grad():
        assert torch.equal(full.still_correct, model(one_call).argmax(1) == y)  # staged == AutoAttack in one call
        assert torch.equal(model(full.adversaries).argmax(1) == y, full.still_correct)  # its adversaries back it
    broken = ~full.still_correct & (model(x).argmax(1) == y)
    assert broken.any() and torch.equal(full.adversaries[broken], one_call[broken])
    assert torch.equal(full.adversaries[full.still_correct], x[full.still_correct])

    ce_only = _DiesAfter(model, 10**9)
    _attack("autoattack", version="custom", attacks=["apgd-ce"]).still_correct(ce_only, x, y, threat)
    ce_calls = 10**9 - ce_only.left

    state = tmp_path / "aa-state.json"
    with pytest.raises(_Interrupted):  # dies inside APGD-T, after APGD-CE finished
        _attack("autoattack", **suite).still_correct(_DiesAfter(model, ce_calls + 20), x, y, threat, state_path=state)
    saved = json.loads(state.read_text())
    assert saved["stages"] == ["apgd-ce", "apgd-t"] and saved["done"] == ["apgd-ce"]
    after_ce = torch.tensor([b == "1" for b in saved["robust"]])
    assert 0 < int(after_ce.sum()) < len(y)  # APGD-CE's progress is on disk
    assert (tmp_path / "aa-state.pt").is_file()  # and the adversaries it found

    calls = _DiesAfter(model, 10**9)
    resumed = _attack("autoattack", **suite).evaluate_points(calls, x, y, threat, state_path=state)
    assert torch.equal(resumed.still_correct, full.still_correct)  # same result as the uninterrupted run
    assert torch.equal(resumed.adversaries, full.adversaries)  # APGD-CE's adversaries restored from disk
    assert 10**9 - calls.left < 1000  # APGD-CE was not run again (APGD-T alone: ~9 x 100 passes)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_pgd_plugin_without_random_start_equals_a_reference_loop(norm: str) -> None:
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    eps, step = (0.1, 0.03) if norm == "Linf" else (0.5, 0.2)
    attack = _attack("pgd", steps=5, step_size=step, random_start=False)
    got = attack.perturb(model, x, y, ThreatModel(norm, str(eps)))
    ref = x.clone()  # the textbook loop, written out independently of robench.api.perturb
    for _ in range(5):
        ref.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(ref), y, reduction="sum"), ref)
        if norm == "Linf":
            ref = torch.min(torch.max(ref.detach() + step * g.sign(), x - eps), x + eps).clamp(0, 1)
        else:
            g_norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)  # a zero gradient stays put
            delta = ref.detach() + step * g / g_norm - x
            d_norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            ref = (x + delta * torch.clamp(eps / d_norm, max=1.0)).clamp(0, 1)
    assert torch.allclose(got, ref, atol=1e-6)
