"""MAC counts against hand-computed figures."""
from __future__ import annotations

from torch import nn

from robench.core.flops import count_macs, human


def test_conv_and_linear_macs() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 5))
    expected = 8 * 8 * 8 * 3 * 9 + 8 * 8 * 8 * 5  # output positions x channels x kernel, then the matmul
    model.train()
    assert count_macs(model, (3, 8, 8)) == expected
    assert model.training  # restored


def test_human() -> None:
    assert human(11_170_000) == "11.17 M" and human(6.66e9) == "6.66 G" and human(12) == "12"
