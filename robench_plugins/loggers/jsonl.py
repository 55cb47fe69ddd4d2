"""The epoch log: one JSON line per epoch in ``<run dir>/log.jsonl``.

On by default (the ``default`` preset lists it), so every run folder holds its history
in a file any tool can read while the run goes on. The whole file is rewritten,
atomically, after each epoch: the ``best`` flag of earlier lines changes when a later
epoch becomes the best one, and a resumed run's log is whole without reading the old one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from robench.api import EpochLog, Logger, RunStart
from robench.api.io import atomic_write_text
from robench.api.params import param


@dataclass(frozen=True)
class JSONLinesParams:
    file: str = param("log.jsonl", help="file name in the run folder")


class JSONLines(Logger[JSONLinesParams]):
    Params = JSONLinesParams

    path: Path | None = None

    def start(self, run: RunStart) -> None:
        self.path = run.run_dir / self.params.file

    def log_epoch(self, epoch: EpochLog) -> None:
        assert self.path is not None, "log_epoch before start"
        lines = [json.dumps({**h, "best": h["epoch"] == epoch.best_epoch}) for h in epoch.history]
        atomic_write_text(self.path, "\n".join(lines) + "\n")
