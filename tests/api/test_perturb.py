"""Projection, attack mode and the shared PGD loop."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robench.api.perturb import attack_mode, cross_entropy_loss, pgd, project, random_start
from robench.api.threat import ThreatModel


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_project_linf_and_box() -> None:
    t = ThreatModel("Linf", "0.1")
    x = torch.rand(5, 1, 4, 4)
    far = x + 3 * torch.randn_like(x)
    p = project(far, x, t)
    assert (p - x).abs().max() <= 0.1 + 1e-7
    assert p.min() >= 0 and p.max() <= 1


def test_project_l2_ball() -> None:
    t = ThreatModel("L2", "0.5")
    x = torch.full((4, 1, 4, 4), 0.5)
    p = project(x + torch.randn_like(x), x, t)
    assert ((p - x).flatten(1).norm(dim=1) <= 0.5 + 1e-6).all()
    inside = x + 0.01
    assert torch.allclose(project(inside, x, t), inside)


def test_random_start_inside_ball_and_seeded() -> None:
    t = ThreatModel("Linf", "8/255")
    x = torch.rand(6, 3, 4, 4)
    a = random_start(x, t, torch.Generator().manual_seed(1))
    b = random_start(x, t, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert (a - x).abs().max() <= 8 / 255 + 1e-7 and (a - x).abs().max() > 0


def test_attack_mode_restores_mode_and_grad_flags() -> None:
    model = small_model().train()
    model[1].weight.requires_grad_(False)
    with attack_mode(model):
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
    assert model.training
    assert not model[1].weight.requires_grad and model[1].bias.requires_grad


def test_pgd_matches_hand_written_loop_and_leaves_weights_alone() -> None:
    model = small_model()
    x = torch.rand(8, 1, 4, 4)
    y = torch.randint(0, 3, (8,))
    t = ThreatModel("Linf", "0.1")
    running = model[2].running_mean.clone()
    with attack_mode(model):
        got = pgd(model, x, t, cross_entropy_loss(y), steps=5, step_size=0.03)
    # the reference: the textbook loop, written out independently
    model.eval()
    ref = x.clone()
    for _ in range(5):
        ref.requires_grad_(True)
        loss = F.cross_entropy(model(ref), y, reduction="sum")
        g, = torch.autograd.grad(loss, ref)
        ref = torch.min(torch.max(ref.detach() + 0.03 * g.sign(), x - 0.1), x + 0.1).clamp(0, 1)
    assert torch.allclose(got, ref, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model[2].running_mean, running)  # BN statistics untouched
