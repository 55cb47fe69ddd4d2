"""UAD-AT, component by component on fixed tensors, and the identity with everything off."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robench.api.errors import ConfigError
from robench.api.features import FeatureHooks, batch_spread, channel_stats, feature_modules, renormalize
from robench.api.model import NormalizedClassifier
from robench.api.threat import ThreatModel
from robench.core.registry import get_registry
from robench_plugins.defenses.uadat import PeerBank, gradient_misalignment, reference, resample, shift_from

THREAT = ThreatModel("Linf", "8/255")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
    )
    net.feature_layers = ("2", "4")
    return NormalizedClassifier(net, (0.5,) * 3, (0.25,) * 3).train()


def uadat(**params):
    return get_registry("defense").create("uadat", params)


# ------------------------------------------------------------------ statistics
def test_channel_statistics_and_their_batch_spread_by_hand():
    h = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]], [[[2.0, 2.0], [2.0, 2.0]]]])  # (2, 1, 2, 2)
    mu, sigma = channel_stats(h)
    assert mu.tolist() == [[4.0], [2.0]]
    # population variance of 1, 3, 5, 7 is 5; of a constant 0 (plus the 1e-6 guard)
    assert sigma[0, 0].item() == pytest.approx(math.sqrt(5 + 1e-6))
    assert sigma[1, 0].item() == pytest.approx(math.sqrt(1e-6))
    # spread across the batch: population std of (4, 2) is 1
    assert batch_spread(mu).item() == pytest.approx(math.sqrt(1 + 1e-6))
    expected = (sigma[0, 0] - sigma[1, 0]).abs().item() / 2
    assert batch_spread(sigma).item() == pytest.approx(math.sqrt(expected**2 + 1e-6))
    # repeating the batch (M samples per example) leaves the spread unchanged
    assert torch.allclose(batch_spread(mu.repeat(3, 1)), batch_spread(mu))


def test_fast_statistics_equal_torchs_mean_and_population_variance():
    h = torch.randn(6, 4, 5, 5) * 3 + 1
    mu, sigma = channel_stats(h)
    assert torch.allclose(mu, h.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(sigma, (h.var(dim=(2, 3), unbiased=False) + 1e-6).sqrt(), atol=1e-5)
    new_mu, new_sigma = mu + 1, sigma * 2
    by_formula = (h - mu[..., None, None]) / sigma[..., None, None] * new_sigma[..., None, None] + new_mu[..., None, None]
    assert torch.allclose(renormalize(h, mu, sigma, new_mu, new_sigma), by_formula, atol=1e-5)


def test_recorded_statistics_are_constants():
    model = tiny_model()
    with FeatureHooks(feature_modules(model), record=True) as hooks:
        model(torch.rand(2, 3, 8, 8)).sum().backward()
    assert hooks.stats and all(not t.requires_grad for pair in hooks.stats.values() for t in pair)


def test_sampling_with_zero_noise_leaves_features_unchanged():
    h = torch.randn(5, 3, 4, 4)
    mu, sigma = channel_stats(h)
    zero = (torch.zeros_like(mu), torch.zeros_like(sigma))
    assert torch.allclose(resample(h, zero), h, atol=1e-5)
    shifted = resample(h, (torch.ones_like(mu), torch.zeros_like(sigma)))
    assert torch.allclose(channel_stats(shifted)[0], mu + batch_spread(mu), atol=1e-5)


def test_shift_uncertainty_is_each_examples_clean_to_adversarial_shift():
    clean = torch.randn(3, 2, 4, 4)
    adv = clean.repeat(2, 1, 1, 1) + torch.randn(6, 2, 4, 4) * torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)  # channel 0 untouched
    adv.requires_grad_()
    mu, sigma = channel_stats(adv)
    c_mu, c_sigma = channel_stats(clean)
    s_mu, s_sigma = shift_from((c_mu, c_sigma), copies=2)(mu, sigma)
    assert torch.allclose(s_mu, (mu - c_mu.repeat(2, 1)).abs()) and torch.allclose(s_sigma, (sigma - c_sigma.repeat(2, 1)).abs())
    assert s_mu[:, 0].abs().max() < 1e-6 and s_mu[:, 1].min() > 0  # no disruption, no uncertainty
    assert mu.requires_grad and not s_mu.requires_grad and not s_sigma.requires_grad  # a constant of the pass
    sampled = resample(adv, spread=shift_from((c_mu, c_sigma), copies=2))
    assert torch.allclose(sampled[:, 0], adv[:, 0], atol=1e-5) and not torch.allclose(sampled[:, 1], adv[:, 1])
    sampled.sum().backward()
    assert adv.grad is not None


def test_without_an_adversary_the_shift_uncertainty_samples_nothing():
    """x_adv = x: the statistics did not move, so every sampled copy is the adversary
    itself and the loss is the one without sampling (the copies only repeat the batch)."""
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 5, (8,))
    losses = []
    for params in ({"uncertainty": "shift", "sample_prob": 1.0, "samples": 2}, {"sampling": False}):
        model = tiny_model()
        losses.append(uadat(**params).objective(model, x, x.clone(), y).loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    model = tiny_model()  # the batch spread, by contrast, does sample
    assert uadat(sample_prob=1.0).objective(model, x, x.clone(), y).loss.item() != pytest.approx(losses[1], rel=1e-5)


def test_the_new_uncertainty_and_alignment_share_keep_earlier_runs_experiment_hash():
    from robench.core.config import config_hash, resolve, validate
    from robench.workflows.plans import plan_run

    def hashed(*items: str) -> str:
        return config_hash(plan_run(validate(resolve(None, None, ["defense=uadat", *items]))).resolved)

    assert hashed() == hashed("defense.uncertainty=batch") != hashed("defense.uncertainty=shift")
    assert hashed() == hashed("defense.align_fraction=1.0") != hashed("defense.align_fraction=0.25")
    assert "uncertainty" in plan_run(validate(resolve(None, None, ["defense=uadat"]))).resolved["defense"]


def test_sampled_features_pass_gradients_to_their_statistics():
    h = torch.randn(4, 2, 3, 3, requires_grad=True)
    resample(h).pow(2).sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0


# ------------------------------------------------------------------- reference
def test_reference_is_the_clean_softmax_for_correct_examples():
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    y = torch.tensor([0, 1, 2])
    stats = torch.randn(3, 4)
    assert torch.equal(reference(logits, y, stats, width=1.0, smoothing=0.1), F.softmax(logits, 1))


def test_reference_for_misclassified_examples_is_a_distribution_from_close_peers():
    # examples 0, 1 correct (class 0); 2 misclassified class 0; 3 misclassified class 2, no peers
    logits = torch.tensor([[4.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 3.0, 0.0], [0.0, 5.0, 0.0]])
    y = torch.tensor([0, 0, 0, 2])
    stats = torch.tensor([[0.0, 0.0], [5.0, 5.0], [0.1, 0.0], [9.0, 9.0]])
    probs = F.softmax(logits, 1)
    for standardize in (False, True):
        ref = reference(logits, y, stats, width=1.0, smoothing=0.1, standardize=standardize)
        assert torch.allclose(ref.sum(1), torch.ones(4)) and (ref >= 0).all()
        # each statistic's z-score over the batch (population std), by hand
        z = [[(stats[i, d] - stats[:, d].mean()) / (stats[:, d].std(unbiased=False) + 1e-6) for d in range(2)]
             for i in range(4)] if standardize else stats.tolist()
        d2 = torch.tensor([sum((float(z[2][d]) - float(z[j][d])) ** 2 for d in range(2)) / 2 for j in (0, 1)])
        w = torch.softmax(-d2, 0)
        assert torch.allclose(ref[2], w[0] * probs[0] + w[1] * probs[1], atol=1e-6)
        assert w[0] > 0.75  # the statistically closer peer dominates
        assert torch.allclose(ref[3], torch.tensor([0.1 / 3, 0.1 / 3, 0.9 + 0.1 / 3]))
        assert torch.equal(ref[:2], probs[:2])


def test_the_peer_bank_keeps_the_newest_entries_in_a_ring():
    bank = PeerBank.empty(5, 2, 3, torch.device("cpu"))
    assert bank.labels.tolist() == [-1] * 5
    bank.push(torch.full((3, 2), 1.0), torch.full((3, 3), 0.1), torch.tensor([0, -1, 2]))
    bank.push(torch.arange(8.0).view(4, 2), torch.full((4, 3), 0.2), torch.tensor([1, 1, 2, 0]))
    assert bank.next == 2 and bank.labels.tolist() == [2, 0, 2, 1, 1]  # slots 3, 4, 0, 1 took the second batch
    assert bank.stats[0].tolist() == [4.0, 5.0] and bank.stats[2].tolist() == [1.0, 1.0]
    bank.push(torch.zeros(9, 2), torch.zeros(9, 3), torch.full((9,), 2))  # more than it holds: the last five
    assert bank.labels.tolist() == [2] * 5 and bank.next == 2


def test_a_banked_peer_refines_an_example_without_one_in_its_batch():
    """Class 1 has no correct example in the batch: without the bank its misclassified
    example falls back to the smoothed one-hot; with one banked peer it gets that peer's
    softmax; banked entries of other classes or marked -1 are never peers."""
    logits = torch.tensor([[4.0, 0.0, 0.0], [3.0, 0.0, 0.0]])  # both predicted class 0
    y = torch.tensor([0, 1])
    stats = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    alone = reference(logits, y, stats, width=1.0, smoothing=0.1)
    assert torch.allclose(alone[1], torch.tensor([0.1 / 3, 0.9 + 0.1 / 3, 0.1 / 3]))
    bank = PeerBank.empty(4, 2, 3, torch.device("cpu"))
    peer = torch.tensor([[0.2, 0.7, 0.1]])
    bank.push(torch.tensor([[5.0, 5.0]]), torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([2]))  # another class
    bank.push(torch.tensor([[9.0, 9.0]]), torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([-1]))  # not a peer
    bank.push(torch.tensor([[1.0, 0.1]]), peer, torch.tensor([1]))
    banked = reference(logits, y, stats, width=1.0, smoothing=0.1, bank=bank)
    assert torch.allclose(banked[1], peer[0]) and torch.allclose(banked[0], alone[0])


def test_uadat_carries_its_bank_through_the_epoch_state():
    model = tiny_model()
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 5, (8,))
    defense = uadat(memory=16, sampling=False, align=False)
    assert defense.epoch_state() == {}
    defense.objective(model, x, x.clone(), y)
    state = defense.epoch_state()
    assert state["next"] == 8 and state["stats"].shape[0] == 16 and (state["labels"][8:] == -1).all()
    other = uadat(memory=16, sampling=False, align=False)
    other.restore_epoch_state(state)
    torch.manual_seed(1)
    a = defense.objective(tiny_model(), x, x.clone(), y).loss
    torch.manual_seed(1)
    b = other.objective(tiny_model(), x, x.clone(), y).loss
    assert a.item() == b.item() and defense.epoch_state()["next"] == 0
    defense.restore_epoch_state(None)  # a new epoch forgets
    assert defense.epoch_state() == {}
    assert uadat().objective(model, x, x.clone(), y) and uadat().epoch_state() == {}  # memory 0 keeps nothing


def test_standardised_distances_do_not_depend_on_the_features_scale():
    """The same batch with statistics 1000 times larger: the same references (tau means
    the same on every architecture); on raw statistics the kernel would pick one peer only."""
    logits = torch.tensor([[4.0, 0.0], [3.0, 1.0], [0.0, 2.0]])
    y = torch.tensor([0, 0, 0])
    stats = torch.tensor([[0.2, 1.0, 0.5], [0.6, 0.8, 0.1], [0.3, 0.7, 0.4]])
    small, large = (reference(logits, y, s, width=1.0, smoothing=0.1) for s in (stats, 1000 * stats))
    assert torch.allclose(small, large, atol=1e-5)
    raw = reference(logits, y, 1000 * stats, width=1.0, smoothing=0.1, standardize=False)
    assert not torch.allclose(raw, small, atol=1e-3)


# ------------------------------------------------------------------- alignment
def test_alignment_is_zero_for_identical_and_two_for_opposite_gradients():
    g = torch.randn(6, 3, 4, 4)
    assert gradient_misalignment(g, g.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert gradient_misalignment(g, -g).item() == pytest.approx(2.0, abs=1e-6)
    assert gradient_misalignment(g, 3.0 * g).item() == pytest.approx(0.0, abs=1e-6)


def test_alignment_gradients_reach_the_weights():
    model = tiny_model()
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 5, (6,))
    xc = x.clone().requires_grad_(True)
    xa = (x + 0.03 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    (gc,) = torch.autograd.grad(F.cross_entropy(model(xc), y, reduction="sum"), xc, create_graph=True)
    (ga,) = torch.autograd.grad(F.cross_entropy(model(xa), y, reduction="sum"), xa, create_graph=True)
    grads = torch.autograd.grad(gradient_misalignment(gc, ga), [model.net[0].weight, model.net[3].weight])
    assert all(g.abs().sum() > 0 for g in grads)  # double backprop reaches the weights

    state = {k: v.clone() for k, v in model.state_dict().items()}

    def weight_grad(align: bool) -> torch.Tensor:
        model.load_state_dict(state)  # same BN statistics, so the same adversaries
        model.zero_grad()
        torch.manual_seed(1)
        uadat(sampling=False, refine=False, align=align).loss(model, x, y, THREAT).loss.backward()
        return model.net[0].weight.grad.clone()

    assert torch.equal(weight_grad(False), weight_grad(False))  # the comparison below is fair
    assert not torch.allclose(weight_grad(True), weight_grad(False))


def _objective_and_weight_grad(params: dict, x, x_adv, y) -> tuple[float, torch.Tensor]:
    model = tiny_model()
    torch.manual_seed(2)
    loss = uadat(**params).objective(model, x, x_adv, y).loss
    loss.backward()
    return loss.item(), model.net[0].weight.grad.clone()


def _pair(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(4)
    x = torch.rand(n, 3, 8, 8)
    return x, (x + 0.03 * torch.randn_like(x).sign()).clamp(0, 1), torch.randint(0, 5, (n,))


def test_alignment_on_the_whole_batch_through_its_own_passes_equals_the_shared_one():
    """A share that rounds up to the whole batch aligns exactly what the shared passes do:
    the separate passes normalise with the same batch statistics."""
    x, x_adv, y = _pair(8)
    shared = _objective_and_weight_grad({"sampling": False, "refine": False}, x, x_adv, y)
    separate = _objective_and_weight_grad({"sampling": False, "refine": False, "align_fraction": 0.99}, x, x_adv, y)
    assert separate[0] == pytest.approx(shared[0], rel=1e-5)
    assert torch.allclose(separate[1], shared[1], rtol=1e-4, atol=1e-6)


def test_alignment_on_a_share_is_the_misalignment_of_the_batchs_first_examples():
    from robench.api.model import frozen_batchnorm_statistics

    x, x_adv, y = _pair(8)
    params = {"sampling": False, "refine": False, "align_weight": 0.5}
    without = _objective_and_weight_grad({**params, "align": False}, x, x_adv, y)[0]
    part = _objective_and_weight_grad({**params, "align_fraction": 0.25}, x, x_adv, y)[0]
    model = tiny_model()
    xc, xa = x[:2].clone().requires_grad_(), x_adv[:2].clone().requires_grad_()
    with frozen_batchnorm_statistics(model):  # two examples, normalised with their own statistics
        gc, ga = torch.autograd.grad([F.cross_entropy(model(xc), y[:2], reduction="sum"),
                                      F.cross_entropy(model(xa), y[:2], reduction="sum")], [xc, xa])
    assert part - without == pytest.approx(0.5 * gradient_misalignment(gc, ga).item(), rel=1e-4)


def test_the_aligned_share_leaves_batchnorm_running_statistics_to_the_loss_passes():
    x, x_adv, y = _pair(6)
    buffers = []
    for params in ({"align": False}, {"align_fraction": 0.5}):
        model = tiny_model()
        uadat(sample_prob=0.0, **params).objective(model, x, x_adv, y)
        buffers.append(_bn_buffers(model))
    assert all(torch.equal(buffers[0][k], buffers[1][k]) for k in buffers[0])


def test_alignment_on_a_share_trains_with_sampling_and_costs_less():
    x, x_adv, y = _pair(8)
    for uncertainty in ("batch", "shift"):
        loss, grad = _objective_and_weight_grad({"sample_prob": 1.0, "uncertainty": uncertainty,
                                                 "align_fraction": 0.25}, x, x_adv, y)
        assert math.isfinite(loss) and grad.abs().sum() > 0
    assert uadat(align_fraction=0.25).forward_passes_per_image() < uadat().forward_passes_per_image()
    assert uadat(align_fraction=0.25).forward_passes_per_image() > uadat(align=False).forward_passes_per_image()


# -------------------------------------------------------------------- identity
def test_with_every_component_off_the_loss_is_ce_plus_beta_kl():
    model = tiny_model()
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 5, (8,))
    defense = uadat(sampling=False, refine=False, align=False, beta=6.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    got = defense.loss(model, x, y, THREAT).loss
    model.load_state_dict(state)  # the loss's train-mode passes moved BN's running statistics
    torch.manual_seed(3)
    x_adv = defense.adversary(model, x, y, THREAT)
    p_clean, p_adv = F.softmax(model(x), 1), F.softmax(model(x_adv), 1)
    kl = (p_clean * (p_clean.log() - p_adv.log())).sum(1).mean()
    assert got.item() == pytest.approx((F.cross_entropy(model(x_adv), y) + 6.0 * kl).item(), rel=1e-5)


def test_full_method_trains_a_step_and_keeps_the_model_in_train_mode():
    model = tiny_model()
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 5, (8,))
    out = uadat(samples=3, sample_prob=1.0).loss(model, x, y, THREAT)
    assert math.isfinite(out.loss.item()) and out.logits.shape == (8, 5)
    out.loss.backward()
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is not None for p in model.parameters())


def test_sampling_draws_distinct_adversaries_per_example():
    model = tiny_model().eval()
    x = torch.rand(4, 3, 8, 8).repeat(3, 1, 1, 1)
    layers = feature_modules(model)
    with FeatureHooks(layers, transform=lambda name, h: resample(h)):
        logits = model(x)
    first, second = logits[:4], logits[4:8]
    assert not torch.allclose(first, second)  # the M copies see different feature statistics


# ------------------------------------------------------------------ feature layers
def test_feature_layers_are_declared_by_the_builtin_architectures():
    archs = get_registry("architecture")
    expect = {"smallcnn": ["net.1", "net.3", "net.6"], "wrn-28-10": ["net.block1", "net.block2", "net.block3"],
              "preact-resnet-18": [f"net.layer{i}" for i in range(1, 5)]}
    for name, layers in expect.items():
        net = archs.create(name, {}).build(10, (3, 32, 32))
        assert [n for n, _ in feature_modules(NormalizedClassifier(net, (0,) * 3, (1,) * 3))] == layers
    model = tiny_model()
    assert [n for n, _ in feature_modules(model, ["2"])] == ["net.2"]
    with pytest.raises(ConfigError, match="not a module"):
        feature_modules(model, ["nope"])
    with pytest.raises(ConfigError, match="declares no feature layers"):
        feature_modules(nn.Sequential(nn.Linear(2, 2)))


# ----------------------------------------------------------------- a real run
def test_short_digits_run_records_finite_losses(tmp_path):
    import json

    from conftest import run_cli

    proc = run_cli("run", "--defense", "uadat", "--epochs", "3", "--attack", "pgd-5", "--n-eval", "120",
                   "--set", "eval.checks=false", "--results-dir", str(tmp_path), "-q")
    assert proc.returncode == 0, proc.stderr
    (path,) = (tmp_path / "records").rglob("*.json")
    rec = json.loads(path.read_text())
    assert rec["defense"]["name"] == "uadat" and rec["defense"]["params"]["samples"] == 2
    losses = [h["loss"] for h in rec["history"]]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert rec["selected"] in rec["checkpoints"] and "uadat" in (tmp_path / "digits-linf-3_16.md").read_text()


def test_statistics_kernel_and_cosine_stay_float32_under_bf16_autocast():
    """Under autocast the features arrive in bf16; UAD-AT's statistics, its proximity
    kernel and its gradient cosine are computed in float32 all the same."""
    torch.manual_seed(0)
    h = torch.randn(8, 4, 5, 5)
    logits, stats = torch.randn(8, 3), torch.rand(8, 6)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    g1, g2 = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    expected_ref = reference(logits, y, stats, width=1.0, smoothing=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mu, sigma = channel_stats(h.bfloat16())
        assert mu.dtype == sigma.dtype == torch.float32
        torch.testing.assert_close(mu, h.bfloat16().float().mean((2, 3)))
        resampled = resample(h.bfloat16())
        assert resampled.dtype == torch.bfloat16  # the network goes on in its own precision
        ref = reference(logits, y, stats, width=1.0, smoothing=0.1)
        assert ref.dtype == torch.float32
        assert torch.equal(ref, expected_ref)  # the same float32 computation as without autocast
        assert gradient_misalignment(g1.bfloat16(), g2.bfloat16()).dtype == torch.float32


def test_full_method_step_under_bf16_autocast_is_finite():
    torch.manual_seed(0)
    model = NormalizedClassifier(get_registry("architecture").create("smallcnn").build(10, (1, 8, 8)), (0.3,), (0.4,))
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 10
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = get_registry("defense").create("uadat").loss(model.train(), x, y, ThreatModel("Linf", "3/16"))
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ------------------------------------------------------- BatchNorm and sampled passes
def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("sampled_bn_update", [False, True])
def test_sampled_passes_keep_batchnorm_running_statistics_out(sampled_bn_update: bool):
    """With every layer resampling (p = 1), only the clean pass moves the running
    statistics; with sampled_bn_update=true the sampled pass moves them too."""
    x = torch.rand(6, 3, 8, 8)
    x_adv, y = (x + 0.03 * torch.randn_like(x)).clamp(0, 1), torch.randint(0, 5, (6,))
    model = tiny_model()
    torch.manual_seed(0)
    uadat(sample_prob=1.0, sampled_bn_update=sampled_bn_update, align=False).objective(model, x, x_adv, y)
    clean_only = tiny_model()
    clean_only(x)  # one train-mode pass on x: what the running statistics should hold
    same = all(torch.equal(a, b) for a, b in zip(_bn_buffers(model).values(), _bn_buffers(clean_only).values()))
    assert same != sampled_bn_update
    assert model.training and all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_unsampled_passes_update_batchnorm_running_statistics():
    x = torch.rand(6, 3, 8, 8)
    x_adv, y = (x + 0.03 * torch.randn_like(x)).clamp(0, 1), torch.randint(0, 5, (6,))
    model, clean_only = tiny_model(), tiny_model()
    uadat(sample_prob=0.0, align=False).objective(model, x, x_adv, y)
    clean_only(x)
    assert not torch.equal(_bn_buffers(model)["net.1.running_mean"], _bn_buffers(clean_only)["net.1.running_mean"])


# ------------------------------------------------- models UAD-AT cannot train, refused early
def test_feature_maps_pass_and_pooled_or_token_features_are_refused() -> None:
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    uadat().check_model(model, (3, 8, 8))  # conv maps: accepted, and nothing changed
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match=r"layer 'net.5' gives \(2, 6, 1, 1\)"):
        uadat(layers=("5",)).check_model(model, (3, 8, 8))  # the global pool: one position
    uadat(layers=("5",), sampling=False, refine=False).check_model(model, (3, 8, 8))  # no statistics needed


def test_a_vision_transformer_is_refused_before_training(tmp_path) -> None:
    from conftest import run_cli

    proc = run_cli("run", "--defense", "uadat", "--arch", "timm/vit_small_patch8_224", "--epochs", "1", "-q",
                   "--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: uadat needs convolutional feature maps") and "(tokens, as in a vision transformer)" in line
    assert not list((tmp_path / "runs").glob("*/last.pt"))  # not one epoch trained
