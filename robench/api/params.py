"""Typed hyperparameters: one dataclass per plugin or config section.

A plugin declares its hyperparameters as a dataclass whose defaults are the official
ones; :func:`param` attaches bounds and help. :func:`build_params` turns untyped
values (from YAML or ``--set``) into that dataclass, or raises a :class:`ConfigError`
that names the key, the expected type and the value it got.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

from robench.api.errors import ConfigError
from robench.api.threat import parse_fraction

T = TypeVar("T")

#: error messages echo the value they got; a 5000-digit number or a 300-deep list must not
#: turn that one line into pages (and ``repr`` of a deeply nested value can itself fail)
_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 80
_SHOWN.maxlong = 40
_SHOWN.maxlevel = 4
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 10

#: a decimal exponent at the end of a number, as ``fractions.Fraction`` reads it
_EXPONENT = re.compile(r"e([-+]?\d+(?:_\d+)*)\s*$", re.IGNORECASE)
#: exponents up to 999: Fraction turns ``1e-99999999`` into an exact integer with a
#: hundred million digits (minutes of CPU), and no float reaches past about 1e308 anyway
MAX_EXPONENT_DIGITS = 3


def shown(value: Any) -> str:
    """``repr(value)``, shortened for an error message."""
    return _SHOWN.repr(value)


def check_exponent(text: str, where: str) -> None:
    """Refuse ``text`` if its decimal exponent has more than 3 digits, before Fraction
    parses it (see ``MAX_EXPONENT_DIGITS``); other text is left to the parser."""
    match = _EXPONENT.search(text)
    if match and len(match[1].lstrip("+-").replace("_", "").lstrip("0")) > MAX_EXPONENT_DIGITS:
        raise ConfigError(f"{where}: {shown(text)} is out of range (decimal exponents stop at 999)")


def param(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    help: str = "",
    hashed_at_default: bool = True,
) -> Any:
    """A dataclass field with bounds checked by :func:`build_params`.

    ``hashed_at_default=False`` leaves the parameter out of the experiment's config hash
    while it has its default: for a parameter added after runs were recorded, so that
    those runs and new ones with the same settings stay one experiment."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "help": help, "hashed_at_default": hashed_at_default}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class NoParams:
    """For plugins without hyperparameters."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin in (list, tuple):
        return "a list"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def describe_params(cls: type) -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) of each hyperparameter of a Params dataclass, for ``robench list``."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING \
            else f.default
        bounds = [f"{op} {f.metadata[k]}" for k, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
                  if f.metadata.get(k) is not None]
        rows.append((f.name, _type_name(hints.get(f.name, f.type)) + (f" {', '.join(bounds)}" if bounds else ""),
                     "null" if default is None else str(default).lower() if isinstance(default, bool) else str(default),
                     f.metadata.get("help", "")))
    return rows


def _mismatch(value: Any, tp: Any, where: str) -> typing.NoReturn:
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {shown(value)}")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, where)
    if origin is Literal:
        for choice in typing.get_args(tp):
            if value == choice or (
                isinstance(value, str) and isinstance(choice, str) and value.lower() == choice.lower()
            ):
                return choice
        _mismatch(value, tp, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            _mismatch(value, tp, where)
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        _mismatch(value, tp, where)
    if tp is int:
        return _coerce_int(value, where)
    if tp is float:
        return _coerce_float(value, where)
    if tp is str:
        if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
            _mismatch(value, tp, where)
        return str(value)
    raise ConfigError(f"{where}: unsupported parameter type {tp!r}")  # a plugin bug, not user input


def _coerce_union(value: Any, tp: Any, where: str) -> Any:
    """``X | None`` and other unions: null where allowed, else the first member that fits."""
    args = typing.get_args(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if type(None) in args:
            return None
        _mismatch(value, tp, where)
    for arg in args:
        if arg is type(None):
            continue
        try:
            return coerce(value, arg, where)
        except ConfigError:
            continue
    _mismatch(value, tp, where)


def _coerce_int(value: Any, where: str) -> int:
    """An int or its decimal string; never a bool (YAML's ``yes`` is not 1)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    _mismatch(value, int, where)


def _coerce_float(value: Any, where: str) -> float:
    """A finite number, from a number or a string (``8/255`` and ``1e-3`` included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        _mismatch(value, float, where)
    try:  # OverflowError: an int or a fraction beyond float's range (1e400, 10**400)
        if isinstance(value, str):
            check_exponent(value, where)
            try:
                out = float(parse_fraction(value))
            except ConfigError:
                _mismatch(value, float, where)
        else:
            out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        raise ConfigError(f"{where}: expected a finite number, got {shown(value)}")
    return out


def _check_bounds(value: Any, meta: Mapping[str, Any], where: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    for key, ok, words in (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    ):
        bound = meta.get(key)
        if bound is not None and not ok(value, bound):
            raise ConfigError(f"{where}: must be {words} {bound}, got {shown(value)}")


def suggest(name: str, known: typing.Iterable[str]) -> str:
    """' (did you mean 'x'?)' or '' for a mistyped key or name."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def build_params(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """Instantiate dataclass ``cls`` from untyped ``values``, validating everything."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {shown(values)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in values:
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise ConfigError(
                f"{where}: unknown key {shown(key)}{suggest(str(key), fields)}; known keys: {known}"
            )
    kwargs = {}
    for key, value in values.items():
        sub = f"{where}.{key}"
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            kwargs[key] = build_params(tp, value or {}, sub)
            continue
        coerced = coerce(value, tp, sub)
        _check_bounds(coerced, fields[key].metadata, sub)
        kwargs[key] = coerced
    try:
        obj = cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    for name, f in fields.items():  # defaults are checked too: a plugin's bad default is a bug
        if name not in kwargs:
            _check_bounds(getattr(obj, name), f.metadata, f"{where}.{name}")
    return obj


def params_to_dict(obj: Any) -> dict[str, Any]:
    """JSON-ready dict of a params dataclass (tuples become lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = params_to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out
