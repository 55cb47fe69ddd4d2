"""Which code made a result: the source checkout's git commit, recorded in every run
record and evaluation report so that a number can be traced to the code that made it."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from robench.core.paths import source_checkout

#: the commit of a copy of the source without its .git folder (a tree copied to a GPU machine)
COMMIT_ENV = "ROBENCH_COMMIT"


def git_commit(root: Path | None = None, outputs: Sequence[Path] = ()) -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted changes to tracked files); where
    the source has no ``.git``, ``$ROBENCH_COMMIT`` as given, else None.

    Files under ``outputs`` (the results and runs folders) do not count: a results folder
    inside the checkout, such as this repository's ``leaderboards/``, is rewritten by every
    run, and the code that made the next record is still the commit's."""
    root = root if root is not None else source_checkout()
    if root is None or not (root / ".git").exists():
        return os.environ.get(COMMIT_ENV) or None
    excluded = [f":(exclude){rel}" for rel in _inside(root, outputs)]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded],
            capture_output=True, text=True, timeout=10,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _inside(root: Path, folders: Sequence[Path]) -> list[str]:
    """The ``folders`` inside ``root``, relative to it (posix); the checkout itself never,
    since excluding it would hide every change."""
    top = root.resolve()
    inside = []
    for folder in folders:
        try:
            rel = Path(folder).resolve().relative_to(top)
        except ValueError:
            continue
        if rel.parts:
            inside.append(rel.as_posix())
    return inside
