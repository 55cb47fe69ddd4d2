"""Models robench did not build: ``robench eval --model package.module:factory``.

The factory is the user's own code, named on the command line, so importing and
calling it is what they asked for (unlike a weights file, which is data and is never
allowed to run code). It must return an ``nn.Module`` that takes inputs in [0, 1] and
returns logits, as RobustBench's models do: robench puts no normalisation in front.
Every way this can go wrong ends in one line naming the spec.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from robench.api.errors import UserError

FORM = "package.module:factory"


@dataclass(frozen=True)
class FactoryModel:
    spec: str
    module: nn.Module
    #: the factory's source file (None for a module without one)
    source: Path | None

    def digest(self) -> str:
        """What identifies the model's code: its spec and its source file's contents."""
        h = hashlib.sha256(self.spec.encode())
        if self.source is not None and self.source.is_file():
            h.update(self.source.read_bytes())
        return h.hexdigest()


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """``pkg.mod:factory`` into the module name and the attribute path (``Class.create`` works too)."""
    module, sep, attr = spec.partition(":")
    names = attr.split(".")
    if not sep or not all(p.isidentifier() for p in module.split(".")) or not all(n.isidentifier() for n in names):
        raise UserError(f"--model expects {FORM} (a function that returns the network), got {spec!r}")
    return module, names


def load_factory(spec: str) -> FactoryModel:
    """Import the module (the current folder first on the path, as ``python -m`` would
    have it), call the factory without arguments and check what it returned."""
    module_name, names = parse_spec(spec)
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"--model {spec}: cannot import {module_name!r} ({exc}); run from the folder that holds "
                        "it or install it") from None
    except Exception as exc:  # the user's module failed while importing: say so in one line
        raise UserError(f"--model {spec}: importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    source = getattr(target, "__file__", None)
    for name in names:
        if not hasattr(target, name):
            raise UserError(f"--model {spec}: {module_name!r} has no {'.'.join(names)!r}")
        target = getattr(target, name)
    if not callable(target):
        raise UserError(f"--model {spec}: {'.'.join(names)!r} is a {type(target).__name__}, not a function")
    try:
        model = target()
    except Exception as exc:
        raise UserError(f"--model {spec}: calling it raised {type(exc).__name__}: {' '.join(str(exc).split())}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"--model {spec}: it returned a {type(model).__name__}, not a torch.nn.Module")
    return FactoryModel(spec, model, Path(source) if source else None)
