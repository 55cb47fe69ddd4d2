"""The adversarial-training defenses, loaded through the registry, against their
formulas written out by hand (the official TRADES and MART code's)."""
from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn

from robench.api import Defense
from robench.api.threat import ThreatModel
from robench.core.registry import get_registry

AT = ("pgd-at", "trades", "mart")
B, C = 8, 5
LINF = ThreatModel("Linf", "8/255")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tensors this small gain nothing from threads, and on a busy CPU every op waits
    for them (100 ms instead of 0.5 ms a step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _defense(name: str, **params: object) -> Defense:
    defense = get_registry("defense").create(name, params)
    assert isinstance(defense, Defense)
    return defense


def _model() -> nn.Module:
    """The same small conv net with BatchNorm at every call, in train mode."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, C)
    ).train()


def _batch() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(B, 1, 6, 6, generator=g), torch.randint(0, C, (B,), generator=g)


def _far_adversary(x: Tensor) -> Tensor:
    """A fixed x' far enough from x that KL(p || q) and KL(q || p) clearly differ."""
    g = torch.Generator().manual_seed(2)
    return (x + 0.4 * torch.randn(x.shape, generator=g)).clamp(0, 1)


# ---------------------------------------------------------- the math, written out
def _softmax(z: Tensor) -> Tensor:
    e = torch.exp(z - z.max(1, keepdim=True).values)
    return e / e.sum(1, keepdim=True)


def _ce(z: Tensor, y: Tensor) -> Tensor:
    """Mean over the batch of -log p_y."""
    p = _softmax(z)
    return -sum(torch.log(p[i, int(y[i])]) for i in range(len(y))) / len(y)


def _kl_rows(p: Tensor, log_q: Tensor) -> Tensor:
    """Per row i: sum_c p_ic (log p_ic - log_q_ic)."""
    return torch.stack([
        sum(p[i, c] * (torch.log(p[i, c]) - log_q[i, c]) for c in range(p.shape[1]))
        for i in range(len(p))
    ])


def _trades_by_hand(z: Tensor, z_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    p, q = _softmax(z), _softmax(z_adv)
    return _ce(z, y) + beta / len(y) * _kl_rows(p, torch.log(q)).sum()


def _mart_by_hand(z: Tensor, z_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    p, q = _softmax(z), _softmax(z_adv)
    margin = 0.0
    for i in range(len(y)):
        ranked = sorted(range(C), key=lambda c: float(q[i, c]), reverse=True)
        wrong = ranked[1] if ranked[0] == int(y[i]) else ranked[0]
        margin = margin - torch.log(1.0001 - q[i, wrong] + 1e-12)
    boosted = _ce(z_adv, y) + margin / len(y)
    kl = _kl_rows(p, torch.log(q + 1e-12))
    weights = torch.stack([1.0000001 - p[i, int(y[i])] for i in range(len(y))])
    return boosted + beta * (kl * weights).sum() / len(y)


# ------------------------------------------------------------------- objectives
def test_pgd_at_objective_is_adversarial_cross_entropy() -> None:
    model, (x, y) = _model(), _batch()
    x_adv = _far_adversary(x)
    out = _defense("pgd-at").objective(model, x, x_adv, y)
    with torch.no_grad():
        z_adv = model(x_adv)
    assert torch.allclose(out.loss, _ce(z_adv, y), atol=1e-6)
    assert torch.allclose(out.logits, z_adv)


def test_trades_objective_matches_the_formula_and_its_kl_direction() -> None:
    model, (x, y) = _model(), _batch()
    x_adv = _far_adversary(x)
    out = _defense("trades", beta=6.0).objective(model, x, x_adv, y)
    with torch.no_grad():
        z, z_adv = model(x), model(x_adv)
    assert torch.allclose(out.loss, _trades_by_hand(z, z_adv, y, 6.0), atol=1e-6)
    assert torch.allclose(out.logits, z_adv)
    # KL(p(x') || p(x)) is a different number: the check above would catch a swap
    swapped = _ce(z, y) + 6.0 / B * _kl_rows(_softmax(z_adv), torch.log(_softmax(z))).sum()
    assert abs(out.loss.item() - swapped.item()) > 1e-3


def _clean_logit_grad(
    name: str, beta: float, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor
) -> Tensor:
    """d loss / d f(x) for a defense's objective, through a hook on the clean forward."""
    seen: list[Tensor] = []

    def keep(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if inputs[0] is x:
            output.retain_grad()
            seen.append(output)

    handle = model.register_forward_hook(keep)
    _defense(name, beta=beta).objective(model, x, x_adv, y).loss.backward()
    handle.remove()
    assert seen and all(z.grad is not None for z in seen)
    return sum(z.grad for z in seen)  # TRADES' official loss passes x twice (CE, then the KL target)


@pytest.mark.parametrize("name, by_hand", [("trades", _trades_by_hand), ("mart", _mart_by_hand)])
def test_gradient_flows_through_the_clean_prediction(name: str, by_hand: Callable[..., Tensor]) -> None:
    model, (x, y) = _model(), _batch()
    x_adv = _far_adversary(x)
    with_kl, without = (_clean_logit_grad(name, beta, model, x, x_adv, y) for beta in (6.0, 0.0))
    robust_grad = (with_kl - without) / 6.0
    assert robust_grad.abs().max() > 1e-3  # zero if p(x) were detached
    with torch.no_grad():
        z_adv = model(x_adv)
    z = model(x).detach().requires_grad_(True)
    (expected,) = torch.autograd.grad(by_hand(z, z_adv, y, 1.0) - by_hand(z, z_adv, y, 0.0), z)
    assert torch.allclose(robust_grad, expected, atol=1e-5)


def test_mart_objective_matches_the_official_formula() -> None:
    model, (x, y) = _model(), _batch()
    x_adv = _far_adversary(x)
    with torch.no_grad():
        z, z_adv = model(x), model(x_adv)
    top = z_adv.argmax(1)
    y = torch.where(torch.arange(B) < B // 2, top, (top + 1) % C)  # both branches of the wrong class
    out = _defense("mart", beta=6.0).objective(model, x, x_adv, y)
    assert torch.allclose(out.loss, _mart_by_hand(z, z_adv, y, 6.0), atol=1e-6)
    assert torch.allclose(out.logits, z_adv)
    assert abs(out.loss.item() - _mart_by_hand(z, z_adv, y, 0.0).item()) > 1e-3  # the KL term counts


def _dropout_model() -> nn.Module:
    """BatchNorm and dropout, as in trades-smallcnn, in train mode."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(4 * 6 * 6, C),
    ).train()


def _official_trades_step(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """The official outer loss, line by line: x, then x', then x again for the KL target."""
    logits = model(x)
    loss_natural = torch.nn.functional.cross_entropy(logits, y)
    kl = torch.nn.KLDivLoss(reduction="sum")(torch.log_softmax(model(x_adv), dim=1), torch.softmax(model(x), dim=1))
    return loss_natural + beta * kl / len(x)


def _step(model: nn.Module, loss_of: Callable[[nn.Module], Tensor]) -> tuple[Tensor, list[Tensor], dict[str, Tensor]]:
    """Loss, weight gradients and BatchNorm running statistics after one backward, from seed 7."""
    torch.manual_seed(7)
    loss = loss_of(model)
    loss.backward()
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    return loss.detach(), [p.grad.clone() for p in model.parameters()], buffers


@pytest.mark.parametrize("make", [_model, _dropout_model], ids=["batchnorm", "batchnorm+dropout"])
def test_trades_recomputed_target_is_the_official_outer_loss(make: Callable[[], nn.Module]) -> None:
    x, y = _batch()
    x_adv = _far_adversary(x)
    official = _step(make(), lambda m: _official_trades_step(m, x, x_adv, y, 6.0))
    exact = _step(make(), lambda m: _defense("trades").objective(m, x, x_adv, y).loss)
    assert _defense("trades").params.recompute_target is True  # the default is the official loss
    assert torch.allclose(exact[0], official[0], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(exact[1], official[1]))
    assert all(torch.equal(exact[2][k], official[2][k]) for k in official[2])


def test_trades_shared_target_differs_only_where_the_issue_says() -> None:
    """recompute_target=false: without dropout the same loss and gradients, BatchNorm's
    running statistics see x once less; with dropout another objective."""
    x, y = _batch()
    x_adv = _far_adversary(x)
    shared = lambda m: _defense("trades", recompute_target=False).objective(m, x, x_adv, y).loss  # noqa: E731
    official = _step(_model(), lambda m: _official_trades_step(m, x, x_adv, y, 6.0))
    mine = _step(_model(), shared)
    assert torch.allclose(mine[0], official[0], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(mine[1], official[1]))
    assert not torch.allclose(mine[2]["1.running_mean"], official[2]["1.running_mean"])
    with_dropout = _step(_dropout_model(), lambda m: _official_trades_step(m, x, x_adv, y, 6.0))
    assert abs(_step(_dropout_model(), shared)[0].item() - with_dropout[0].item()) > 1e-4


@pytest.mark.parametrize("name, params, passes", [
    ("standard", {}, 3), ("pgd-at", {}, 23), ("pgd-at", {"steps": 16}, 35), ("mart", {}, 26),
    ("trades", {}, 30), ("trades", {"recompute_target": False}, 27),
    ("trades", {"recompute_target": True, "cache_clean": False}, 39),
    ("uadat", {}, 35), ("uadat", {"align": False}, 27), ("uadat", {"sampling": False, "align": False}, 24),
])
def test_training_cost_in_forward_pass_equivalents(name: str, params: dict[str, object], passes: float) -> None:
    """The published counts per training image: standard 3F, PGD-10 AT 23F, MART 26F,
    TRADES 39F as officially written and 27F with the cached clean target alone."""
    assert _defense(name, **params).forward_passes_per_image() == passes


# ------------------------------------------------------------------ adversaries
def test_trades_cached_clean_softmax_is_exact_and_saves_forwards() -> None:
    x, y = _batch()
    runs = {}
    for cache in (True, False):
        defense = _defense("trades", cache_clean=cache)
        model = _model()
        calls: list[int] = []
        model.register_forward_hook(lambda *_: calls.append(1))  # noqa: B023 (this model's own list)
        torch.manual_seed(3)
        x_adv = defense.adversary(model, x, y, LINF)
        forwards = len(calls)
        torch.manual_seed(3)
        out = defense.loss(_model(), x, y, LINF)
        runs[cache] = (x_adv, out, forwards)
    (cached, out_c, n_c), (plain, out_p, n_p) = runs[True], runs[False]
    assert not torch.equal(cached, x)
    assert torch.equal(cached, plain)
    assert torch.equal(out_c.loss, out_p.loss) and torch.equal(out_c.logits, out_p.logits)
    assert (n_c, n_p) == (1 + 10, 2 * 10)


@pytest.mark.parametrize("norm, eps", [("Linf", "8/255"), ("L2", "0.5")])
@pytest.mark.parametrize("name", AT)
def test_adversary_stays_in_the_ball_and_leaves_the_model_alone(name: str, norm: str, eps: str) -> None:
    model, (x, y) = _model(), _batch()
    threat = ThreatModel(norm, eps)
    model(x)  # nontrivial BN running statistics
    model[-1].bias.requires_grad_(False)  # a mixed set of flags, to see them restored
    flags = [p.requires_grad for p in model.parameters()]
    before = copy.deepcopy(model.state_dict())
    x_adv = _defense(name).adversary(model, x, y, threat)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "Linf" else delta.norm(dim=1)
    assert (size <= threat.value + 1e-6).all() and (size > 0).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats and weights untouched


@pytest.mark.parametrize("name", ("trades", "mart"))
def test_defaults_are_the_official_ones(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    defense = _defense(name)
    p = defense.params
    assert (p.beta, p.steps, p.start_std, p.step_size) == (6.0, 10, 0.001, None)
    assert name != "trades" or p.cache_clean is True
    module = sys.modules[type(defense).__module__]
    real_pgd, calls = module.pgd, []

    def spy(*args: object, **kwargs: object) -> Tensor:
        calls.append(kwargs)
        return real_pgd(*args, **kwargs)

    monkeypatch.setattr(module, "pgd", spy)
    x, y = _batch()
    x[:, :, 0, :] = 0.0  # a start clamped to [0, 1] would have no negative pixel here
    model = _model()
    torch.manual_seed(4)
    defense.adversary(model, x, y, ThreatModel("Linf", "0.031"))
    # TRADES takes its first step in fp32, then the rest: one PGD of 10 steps all the same
    assert sum(c["steps"] for c in calls) == 10 and all(abs(c["step_size"] - 0.007) < 1e-12 for c in calls)
    seen = calls[0]
    torch.manual_seed(4)
    assert torch.equal(seen["start"], x + 0.001 * torch.randn(x.shape))
    assert seen["start"].min() < 0  # neither clamped nor projected before the first step
    assert _defense(name, step_size="0.007").params.step_size == 0.007


@pytest.mark.parametrize("name", AT)
def test_loss_is_the_objective_of_the_adversary(name: str) -> None:
    x, y = _batch()
    defense = _defense(name)
    composed, split = _model(), _model()
    torch.manual_seed(5)
    out = defense.loss(composed, x, y, LINF)
    torch.manual_seed(5)
    ref = defense.objective(split, x, defense.adversary(split, x, y, LINF), y)
    assert torch.equal(out.loss, ref.loss) and torch.equal(out.logits, ref.logits)
    assert composed.training
