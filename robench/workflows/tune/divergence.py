"""Tuning runs whose training diverged, kept beside the tuning records.

A diverged run writes no record, yet it is an outcome of its setting, as much as a
validation score is: the setting is unstable with that seed. ``diverged.json`` keeps
it, so that the trial counts as diverged when the choice is made (now, on a rerun, or
from committed files), and a rerun does not train the same run again.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from robench.api.errors import ConfigError
from robench.api.io import atomic_write_text

DIVERGED_FILE = "diverged.json"


@dataclass(frozen=True)
class Divergence:
    config_hash: str
    seed: int
    #: the run's own line: where its loss became NaN or inf
    reason: str
    #: robench's commit when it diverged (None outside a git checkout)
    commit: str | None = None


def load_diverged(folder: Path) -> dict[tuple[str, int], Divergence]:
    """The diverged runs noted in ``folder``, by (config hash, seed)."""
    path = folder / DIVERGED_FILE
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["runs"]
        found = [Divergence(str(e["config_hash"]), int(e["seed"]), str(e["reason"]), e.get("commit")) for e in entries]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a list of diverged runs ({exc}); fix or remove it") from None
    return {(d.config_hash, d.seed): d for d in found}


def note_diverged(folder: Path, run: Divergence) -> None:
    """Add ``run`` to the folder's list (atomically)."""
    known = load_diverged(folder)
    known[run.config_hash, run.seed] = run
    entries = [asdict(d) for _, d in sorted(known.items())]
    atomic_write_text(folder / DIVERGED_FILE, json.dumps({"runs": entries}, indent=2) + "\n")


def diverged_noter(folder: Path, commit: str | None) -> Callable[[Any, Any], None]:
    """For a sweep runner's ``on_result``: notes each sweep point whose run diverged as it
    lands, so that a later stop loses nothing."""
    def note(point: Any, result: Any) -> None:
        if result.status == "diverged":
            note_diverged(folder, Divergence(point.config_hash, point.seed, result.reason, commit))
    return note
