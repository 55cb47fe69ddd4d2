"""Old module names keep importing, with a DeprecationWarning, after the move into layers.

Third-party plugins written against the flat layout (``robench.perturb``,
``robench.registry``, ...) keep working: the finder below answers an old name with the
module now living under the new one, so both names are the same module object.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

#: old name -> new name; a package's submodules follow it
MOVED: dict[str, str] = {
    "robench.params": "robench.api.params",
    "robench.threat": "robench.api.threat",
    "robench.errors": "robench.api.errors",
    "robench.perturb": "robench.api.perturb",
    "robench.features": "robench.api.features",
    "robench.model": "robench.api.model",
    "robench.data": "robench.api.data",
    "robench.io": "robench.api.io",
    "robench.config": "robench.core.config",
    "robench.registry": "robench.core.registry",
    "robench.paths": "robench.core.paths",
    "robench.seeding": "robench.core.seeding",
    "robench.progress": "robench.core.progress",
    "robench.flops": "robench.core.flops",
    "robench.checkpoint": "robench.engine.checkpoint",
    "robench.engine.evaluate": "robench.evaluation.sequential",
    "robench.engine.checks": "robench.evaluation.checks",
    "robench.engine.contract": "robench.evaluation.contract",
    "robench.engine.probe": "robench.evaluation.probe",
    "robench.protocol": "robench.evaluation.protocol",
    "robench.records": "robench.results.records",
    "robench.reports": "robench.results.reports",
    "robench.plots": "robench.results.plots",
    "robench.leaderboard": "robench.results.leaderboard",
    "robench.run": "robench.workflows.run",
    "robench.ablation": "robench.workflows.ablate",
    "robench.bench": "robench.workflows.bench",
    "robench.scaffold": "robench.workflows.scaffold",
    "robench.sweep": "robench.workflows.sweep",
    "robench.cli_bench": "robench.cli.bench",
    "robench.cli_boards": "robench.cli.boards",
    "robench.cli_new": "robench.cli.new",
    "robench.cli_sweep": "robench.cli.sweep",
}


def new_name(old: str) -> str | None:
    """The current name of a module imported under its pre-layers name, if it moved."""
    if old in MOVED:
        return MOVED[old]
    parent, _, leaf = old.rpartition(".")
    while parent:
        if parent in MOVED:
            return f"{MOVED[parent]}.{old[len(parent) + 1:]}"
        parent, _, leaf = parent.rpartition(".")
    return None


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Already executed under its new name; undo the import system's relabelling."""
        module.__spec__ = self.spec


class MovedFinder(importlib.abc.MetaPathFinder):
    """Resolves old names only; every other import passes through untouched."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        new = new_name(fullname)
        if new is None:
            return None
        warnings.warn(
            f"{fullname} moved to {new}; import it from there; the old name will be removed in a later release",
            DeprecationWarning, stacklevel=2,
        )
        module = importlib.import_module(new)
        return importlib.machinery.ModuleSpec(fullname, _Alias(new), is_package=hasattr(module, "__path__"))


def install() -> None:
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedFinder())
