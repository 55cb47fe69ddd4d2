"""Code written against the flat layout keeps importing, with a DeprecationWarning."""
from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

CHECK = """
import importlib, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    old = importlib.import_module({old!r})
new = importlib.import_module({new!r})
assert old is new, (old, new)
assert new.__spec__.name == {new!r}, new.__spec__.name
moved = [w for w in caught if issubclass(w.category, DeprecationWarning) and {new!r} in str(w.message)]
assert moved, [str(w.message) for w in caught]
print("ok")
"""


@pytest.mark.parametrize(("old", "new"), [
    ("robench.perturb", "robench.api.perturb"),
    ("robench.registry", "robench.core.registry"),
    ("robench.records", "robench.results.records"),
    ("robench.leaderboard.table", "robench.results.leaderboard.table"),
    ("robench.engine.evaluate", "robench.evaluation.sequential"),
    ("robench.sweep.grid", "robench.workflows.sweep.grid"),
])
def test_an_old_module_name_is_the_new_module(old: str, new: str) -> None:
    proc = subprocess.run([sys.executable, "-c", CHECK.format(old=old, new=new)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


def test_from_import_of_an_old_name_works() -> None:
    code = ("import warnings; warnings.simplefilter('ignore')\n"
            "from robench.registry import get_registry\n"
            "from robench.perturb import pgd\n"
            "from robench.api import Defense, AdversarialDefense\n"
            "assert issubclass(AdversarialDefense, Defense)\n"
            "assert get_registry('defense').load('pgd-at').__module__ == 'robench_plugins.defenses.pgd_at'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_names_that_never_existed_still_fail() -> None:
    proc = subprocess.run([sys.executable, "-c", "import robench.no_such_module"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr
