"""The built-in plugins through the registry, as the engine sees them."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from robench.api import LossOutput
from robench.api.model import NormalizedClassifier
from robench.api.threat import ThreatModel
from robench.core.registry import get_registry


def _digits():
    ds = get_registry("dataset").create("digits")
    return ds, ds.load(None, seed=0)


def test_digits_splits_are_real_disjoint_and_fixed() -> None:
    ds, splits = _digits()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1257, 180, 360)
    for split in (splits.train, splits.val, splits.test):
        x = split.images()
        assert x.shape[1:] == (1, 8, 8) and x.min() >= 0 and x.max() <= 1
        assert set(split.y.tolist()) == set(range(10))  # stratified: every class present
    rows = lambda s: {tuple(r.flatten().tolist()) + (int(label),) for r, label in zip(s.x, s.y)}  # noqa: E731
    assert not rows(splits.test) & rows(splits.train)
    again = ds.load(None, seed=0)
    assert torch.equal(again.test.x, splits.test.x)
    assert ds.threat_model == ThreatModel("Linf", "3/16")


def test_digits_tests_every_seed_on_the_same_images_and_normalises_without_them() -> None:
    ds, zero = _digits()
    one = ds.load(None, seed=1)
    assert torch.equal(one.test.x, zero.test.x) and torch.equal(one.test.y, zero.test.y)
    assert not torch.equal(one.val.x, zero.val.x)  # the seed draws the validation images
    seen = torch.cat([zero.train.x, zero.val.x])  # every image outside the test split
    assert abs(ds.mean[0] - float(seen.mean())) < 1e-6 and abs(ds.std[0] - float(seen.std(unbiased=False))) < 1e-6
    everything = torch.cat([seen, zero.test.x])
    assert abs(ds.mean[0] - float(everything.mean())) > 1e-5  # the test images are left out
    other = get_registry("dataset").create("digits", {"split_seed": 1}).load(None, seed=0)
    assert not torch.equal(other.test.x, zero.test.x)


def test_smallcnn_builds_for_small_and_cifar_inputs() -> None:
    arch = get_registry("architecture").create("smallcnn")
    for shape in ((1, 8, 8), (3, 32, 32)):
        net = arch.build(10, shape)
        assert net(torch.rand(2, *shape)).shape == (2, 10)


def _model_and_batch():
    torch.manual_seed(0)
    ds, splits = _digits()
    net = get_registry("architecture").create("smallcnn").build(10, ds.input_shape)
    model = NormalizedClassifier(net, ds.mean, ds.std).train()
    return model, splits.train.images(slice(0, 16)), splits.train.y[:16], ds.threat_model


def test_standard_loss_is_clean_cross_entropy() -> None:
    model, x, y, t = _model_and_batch()
    out = get_registry("defense").create("standard").loss(model, x, y, t)
    assert isinstance(out, LossOutput)
    assert torch.allclose(out.loss, F.cross_entropy(model(x), y))


def test_pgd_at_trains_on_adversaries_inside_the_ball() -> None:
    model, x, y, t = _model_and_batch()
    defense = get_registry("defense").create("pgd-at", {"steps": 3})
    out = defense.loss(model, x, y, t)
    assert model.training  # the defense leaves the model in train mode
    clean = F.cross_entropy(model(x), y)
    assert out.loss > clean  # adversaries raise the loss
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_pgd_attack_lowers_accuracy_and_respects_eps() -> None:
    model, x, y, t = _model_and_batch()
    attack = get_registry("attack").create("pgd", {"steps": 10, "restarts": 2})
    assert attack.label() == "PGD-10x2"
    # a briefly trained model, so there is accuracy to lose
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    x_adv = attack.perturb(model, x, y, t, generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= t.value + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        clean_acc = (model(x).argmax(1) == y).float().mean()
        adv_acc = (model(x_adv).argmax(1) == y).float().mean()
    assert clean_acc > 0.5 and adv_acc < clean_acc
