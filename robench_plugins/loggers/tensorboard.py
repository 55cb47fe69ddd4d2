"""TensorBoard event files through ``torch.utils.tensorboard`` (needs ``tensorboard``).

Events go into ``<run dir>/tensorboard`` unless ``log_dir`` says otherwise, so
``tensorboard --logdir <runs folder>`` shows every run beside the others. Epoch metrics
are plotted against the epoch, step losses against the global step, and the results
enter the HParams view with the run's flattened configuration, so runs can be
filtered by any hyperparameter.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robench.api import EpochLog, Logger, RunStart
from robench.api.loggers import Status, flat_params
from robench.api.params import param


@dataclass(frozen=True)
class TensorBoardParams:
    log_dir: str | None = param(None, help="folder of the event files; null: <run dir>/tensorboard")


class TensorBoard(Logger[TensorBoardParams]):
    Params = TensorBoardParams

    #: set by start: the open writer, the flat configuration for the HParams view, the last epoch logged
    writer: Any = None
    config: Mapping[str, Any] | None = None
    last_epoch: int = 0

    def start(self, run: RunStart) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError(f"{exc}; pip install tensorboard (or robench[tensorboard])") from None
        folder = Path(self.params.log_dir).expanduser() if self.params.log_dir else run.run_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(folder))
        self.config = flat_params(run.config)
        self.last_epoch = run.first_epoch - 1
        if not run.resumed:
            self.writer.add_text("config", "```\n" + json.dumps(dict(run.config), indent=2, default=str) + "\n```")

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"step/{key}", value, step)

    def log_epoch(self, epoch: EpochLog) -> None:
        for key, value in epoch.metrics.items():
            if value is not None:
                self.writer.add_scalar(f"epoch/{key}", value, epoch.epoch)
        self.last_epoch = epoch.epoch
        self.writer.flush()

    def log_results(self, results: Mapping[str, float]) -> None:
        from torch.utils.tensorboard.summary import hparams

        for key, value in results.items():
            self.writer.add_scalar(f"test/{key}", value, self.last_epoch)
        metrics = {f"test/{key}": value for key, value in results.items()}
        for summary in hparams(dict(self.config or {}), metrics):  # the HParams view, in this run's own folder
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def finish(self, status: Status) -> None:
        if self.writer is not None:
            self.writer.close()
