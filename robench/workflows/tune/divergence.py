"""Tuning runs whose training diverged, kept beside the tuning records.

A diverged run writes no record, yet it is an outcome of its setting, as much as a
validation score is: the setting is unstable with that seed. ``diverged.json`` keeps
it, so that the trial counts as diverged when the choice is made (now, on a rerun, or
from committed files), and a rerun does not train the same run again.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

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


def note_diverged(folder: Path, runs: Iterable[Divergence]) -> Mapping[tuple[str, int], Divergence]:
    """Add ``runs`` to the folder's list (atomically); returns the whole list."""
    known = load_diverged(folder)
    new = {(d.config_hash, d.seed): d for d in runs}
    if not new:
        return known
    known.update(new)
    entries = [asdict(d) for _, d in sorted(known.items())]
    atomic_write_text(folder / DIVERGED_FILE, json.dumps({"runs": entries}, indent=2) + "\n")
    return known
