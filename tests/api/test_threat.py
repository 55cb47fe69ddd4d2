"""Threat models keep the exact eps."""
from __future__ import annotations

from fractions import Fraction

import pytest

from robench.api.errors import ConfigError
from robench.api.threat import ThreatModel, parse_fraction


def test_exact_eps_is_kept() -> None:
    t = ThreatModel("linf", "8/255")
    assert t.norm == "Linf" and t.eps == "8/255"
    assert t.value == 8 / 255 and t.value != 0.031
    assert t.slug == "linf-8_255"
    assert str(ThreatModel("l2", "0.5")) == "L2 eps=0.5"


@pytest.mark.parametrize("eps", ["-0.1", "1.5", "abc", "1/0", ""])
def test_bad_eps_rejected(eps: str) -> None:
    with pytest.raises(ConfigError):
        ThreatModel("Linf", eps)


def test_bad_norm_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown norm"):
        ThreatModel("L7", "0.1")


def test_parse_fraction_does_not_eval() -> None:
    with pytest.raises(ConfigError):
        parse_fraction("__import__('os').getcwd()")
    assert parse_fraction("3/16") * 16 == 3


def test_eps_zero_and_exact_scaling() -> None:
    zero = ThreatModel("Linf", "0")
    assert zero.value == 0.0
    assert ThreatModel("Linf", "8/255").scaled(2).eps == "16/255"
    assert ThreatModel("L2", "0.5").scaled(Fraction(1, 4)).eps == "1/8"
