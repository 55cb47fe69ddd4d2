"""Tests of the fast-at defense through robench's registry (run: pytest)."""
from __future__ import annotations

import math

import pytest
import torch

from robench.api.errors import ConfigError
from robench.api.threat import ThreatModel
from robench.core.registry import clear_cache, get_registry


def make(params=None):
    clear_cache()  # see plugins installed since the registry was first read
    return get_registry("defense").create("fast-at", params or {})


def small_model():
    torch.manual_seed(0)
    return get_registry("architecture").create("smallcnn", {"width": 4, "hidden": 16}).build(10, (1, 8, 8))


def digits(n: int = 64):
    """The first ``n`` training images of robench's embedded digits dataset."""
    data = get_registry("dataset").create("digits", {})
    train = data.load(None, seed=0).train
    return train.images(slice(0, n)), train.y[:n], data.threat_model


def test_registered_with_official_defaults():
    from robench_fast_at import FastAt

    defense = make()
    assert isinstance(defense, FastAt)
    assert (defense.params.alpha, defense.params.random_start) == (1.25, True)
    # values arrive as YAML scalars (from --set or a config file); robench checks them against Params
    assert make({"alpha": "5/4", "random_start": False}).params == defense.params.__class__(1.25, False)
    with pytest.raises(ConfigError, match="alpha"):
        make({"alpha": 0})


@pytest.mark.parametrize("threat", [ThreatModel("Linf", "3/16"), ThreatModel("L2", "1")])
def test_adversaries_stay_in_the_threat_model(threat):
    model, (x, y, _) = small_model(), digits()
    model.train()
    x_adv = make().adversary(model, x, y, threat)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if threat.norm == "Linf" else delta.norm(dim=1)
    assert size.max() <= threat.value + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, x)


def test_without_random_start_and_alpha_1_it_is_robench_fgsm():
    model, (x, y, threat) = small_model(), digits()
    model.train()
    ours = make({"random_start": False, "alpha": 1.0}).adversary(model, x, y, threat)
    fgsm = get_registry("attack").create("fgsm").perturb(model, x, y, threat)
    assert torch.equal(ours, fgsm)


def test_the_attack_leaves_the_model_as_it_found_it():
    torch.manual_seed(0)
    model = torch.nn.Sequential(  # with BatchNorm, whose running statistics the attack must not update
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 10),
    )
    x, y, threat = digits()
    model.train()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    make().adversary(model, x, y, threat)
    assert model.training, "a defense must leave the model in train mode"
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items()), "BN statistics changed"


def test_training_steps_lower_the_adversarial_loss():
    model, (x, y, threat) = small_model(), digits()
    model.train()
    defense, opt = make(), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(1)
    losses = []
    for _ in range(30):
        out = defense.loss(model, x, y, threat)
        assert out.logits.shape == (len(y), 10) and math.isfinite(out.loss.item())
        opt.zero_grad()
        out.loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        opt.step()
        losses.append(out.loss.item())
    assert model.training
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
