"""Learning-rate schedules and eps warm-up as the papers use them."""
from __future__ import annotations

import math

import pytest

from robench.api.errors import ConfigError
from robench.api.threat import ThreatModel
from robench.core.config import TrainConfig
from robench.engine.schedule import check_schedule, learning_rate, warmed_threat


def _epoch_rates(cfg: TrainConfig, steps: int) -> list[float]:
    """The rate of the first step of every epoch."""
    return [learning_rate(cfg, e * steps, steps) for e in range(cfg.epochs)]


def test_piecewise_matches_the_official_trades_schedule():
    # train_trades_cifar10.py: for epoch in 1..76: lr = 0.1, and 0.01 once epoch >= 75
    cfg = TrainConfig(epochs=76, lr=0.1, schedule="piecewise", milestones=(74,))
    official = [0.1 * (0.1 if epoch >= 75 else 1.0) for epoch in range(1, 77)]
    assert _epoch_rates(cfg, steps=3) == pytest.approx(official, rel=1e-12)
    # and the rate is constant inside an epoch
    assert learning_rate(cfg, 74 * 3 - 1, 3) == pytest.approx(0.1)
    assert learning_rate(cfg, 74 * 3, 3) == pytest.approx(0.01)


def test_piecewise_two_milestones_like_bag_of_tricks():
    cfg = TrainConfig(epochs=110, lr=0.1, schedule="piecewise", milestones=(100, 105))
    rates = _epoch_rates(cfg, steps=2)
    assert rates[99] == pytest.approx(0.1) and rates[100] == pytest.approx(0.01)
    assert rates[104] == pytest.approx(0.01) and rates[105] == pytest.approx(0.001)
    assert rates[109] == pytest.approx(0.001)


def test_cosine_and_onecycle_shapes():
    cos = TrainConfig(epochs=4, lr=0.2, schedule="cosine")
    assert learning_rate(cos, 0, 10) == pytest.approx(0.2)
    assert learning_rate(cos, 20, 10) == pytest.approx(0.1)
    assert learning_rate(cos, 39, 10) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 39 / 40)))
    one = TrainConfig(epochs=10, lr=0.2, schedule="onecycle", peak=0.4)
    rates = [learning_rate(one, s, 10) for s in range(100)]
    assert rates.index(max(rates)) == 39 and max(rates) == pytest.approx(0.2)
    assert rates[0] == pytest.approx(0.2 / 40) and rates[-1] == pytest.approx(0.0)
    assert all(a <= b for a, b in zip(rates[:40], rates[1:40]))
    assert all(a >= b for a, b in zip(rates[39:], rates[40:]))
    assert learning_rate(TrainConfig(schedule="constant", lr=0.05), 123, 7) == 0.05


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"schedule": "piecewise"}, "needs milestones"),
        ({"schedule": "cosine", "milestones": (5,)}, "only the piecewise"),
        ({"schedule": "piecewise", "milestones": (5, 3)}, "increasing"),
        ({"schedule": "piecewise", "milestones": (10,)}, "between 1 and epochs - 1"),
        ({"eps_warmup_epochs": 11}, "exceeds train.epochs"),
    ],
)
def test_inconsistent_schedules_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        check_schedule(TrainConfig(epochs=10, **kwargs))


def test_eps_warmup_is_linear_and_exact():
    threat = ThreatModel("Linf", "8/255")
    cfg = TrainConfig(epochs=4, eps_warmup_epochs=2)
    steps = 4  # ramp over 8 steps
    assert warmed_threat(threat, cfg, 0, steps).eps == "1/255"
    assert warmed_threat(threat, cfg, 3, steps).eps == "4/255"
    assert warmed_threat(threat, cfg, 7, steps) == threat
    assert warmed_threat(threat, cfg, 20, steps) == threat
    assert warmed_threat(threat, TrainConfig(epochs=4), 0, steps) == threat
