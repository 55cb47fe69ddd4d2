"""Weights & Biases (needs ``wandb``; ``pip install robench[wandb]``).

The W&B run takes the robench run's id, so a resumed run continues the same W&B run,
and its group is the experiment's config hash, so a board row's seeds sit together.
``mode`` null leaves the choice to W&B (``WANDB_MODE``, else online; ``offline`` keeps
everything in ``<run dir>/wandb`` for a later ``wandb sync``). Checkpoints and the
record are uploaded as artifacts (one per file, named after the run) unless
``checkpoints`` is false, which keeps the two ``.pt`` files local.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from robench.api import EpochLog, Logger, RunStart
from robench.api.loggers import ArtifactKind, Status
from robench.api.params import param

#: the exit code W&B is given for each way a run ends
_EXIT_CODES: dict[str, int] = {"finished": 0, "failed": 1, "stopped": 143}


@dataclass(frozen=True)
class WandbParams:
    project: str = param("robench", help="W&B project")
    entity: str | None = param(None, help="W&B team or user; null: your default")
    mode: Literal["online", "offline", "disabled"] | None = param(
        None, help="null: W&B's own choice (WANDB_MODE, else online)"
    )
    group: str | None = param(None, help="null: the config hash, so the seeds of one experiment sit together")
    tags: tuple[str, ...] = param((), help="W&B tags")
    checkpoints: bool = param(True, help="upload best.pt and last.pt as model artifacts")


class WandB(Logger[WandbParams]):
    Params = WandbParams

    #: set by start: the W&B run and the robench run's id
    run: Any = None
    run_id: str = ""

    def start(self, run: RunStart) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise ImportError(f"{exc}; pip install wandb (or robench[wandb])") from None
        run.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = run.run_id
        self.run = wandb.init(
            project=self.params.project, entity=self.params.entity, mode=self.params.mode,
            group=self.params.group or run.config_hash, tags=list(self.params.tags), job_type="train",
            name=run.run_id, id=run.run_id, resume="allow", dir=str(run.run_dir),
            config=dict(run.config), reinit="create_new",
        )
        self.run.define_metric("epoch")
        self.run.define_metric("epoch/*", step_metric="epoch")
        self.run.define_metric("step")
        self.run.define_metric("step/*", step_metric="step")

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log({"step": step, **{f"step/{k}": v for k, v in metrics.items()}})

    def log_epoch(self, epoch: EpochLog) -> None:
        values = {f"epoch/{k}": v for k, v in epoch.metrics.items() if v is not None}
        self.run.log({"epoch": epoch.epoch, **values})

    def log_results(self, results: Mapping[str, float]) -> None:
        for key, value in results.items():
            self.run.summary[f"test/{key}"] = value

    def log_artifact(self, path: Path, kind: ArtifactKind) -> None:
        if kind == "checkpoint" and not self.params.checkpoints:
            return
        import wandb

        suffix = path.stem if kind == "checkpoint" else kind
        artifact = wandb.Artifact(f"{self.run_id}-{suffix}", type="model" if kind == "checkpoint" else kind)
        artifact.add_file(str(path), name=path.name)
        self.run.log_artifact(artifact)

    def finish(self, status: Status) -> None:
        if self.run is not None:
            self.run.finish(exit_code=_EXIT_CODES[status])
