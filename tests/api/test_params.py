"""Typed hyperparameter dataclasses built from untyped values."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from robench.api.errors import ConfigError
from robench.api.params import build_params, param, params_to_dict


@dataclass(frozen=True)
class Demo:
    steps: int = param(10, ge=1)
    rate: float = param(0.5, gt=0, le=1)
    flag: bool = True
    mode: Literal["a", "b"] = "a"
    size: float | None = param(None, gt=0)
    dims: tuple[int, ...] = (1, 2)


def test_defaults_and_coercion() -> None:
    assert build_params(Demo, {}, "demo") == Demo()
    got = build_params(Demo, {"steps": "7", "rate": "1/4", "mode": "B", "size": None, "dims": [3]}, "demo")
    assert got == Demo(steps=7, rate=0.25, mode="b", size=None, dims=(3,))
    assert params_to_dict(got) == {"steps": 7, "rate": 0.25, "flag": True, "mode": "b", "size": None, "dims": [3]}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"steps": 0}, "demo.steps: must be >= 1, got 0"),
        ({"steps": True}, "demo.steps: expected an integer"),
        ({"rate": 0}, "demo.rate: must be > 0"),
        ({"rate": 2}, "demo.rate: must be <= 1"),
        ({"rate": float("nan")}, "demo.rate: expected a finite number"),
        ({"rate": "nan"}, "demo.rate: expected a number"),
        ({"flag": "yes"}, "demo.flag: expected true or false"),
        ({"mode": "c"}, "demo.mode: expected one of 'a', 'b'"),
        ({"size": -1.0}, "demo.size: must be > 0"),
        ({"dims": 3}, "demo.dims: expected a list"),
        ({"stesp": 3}, "did you mean 'steps'"),
    ],
)
def test_errors_name_key_and_value(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_params(Demo, values, "demo")
    assert message in str(info.value)
