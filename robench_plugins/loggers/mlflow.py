"""MLflow (needs ``mlflow``; ``pip install robench[mlflow]``), through ``MlflowClient``.

``tracking_uri`` null leaves the store to MLflow: ``MLFLOW_TRACKING_URI``, else its
default in the current folder. Each robench run is one MLflow run, tagged with the
robench run id and config hash; a resumed run finds its MLflow run by that tag and
continues it. The flattened configuration goes in as parameters, the checkpoints and
the record as artifacts (``checkpoints: false`` keeps the ``.pt`` files out of the store).
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robench.api import EpochLog, Logger, RunStart
from robench.api.loggers import ArtifactKind, Status, flat_params
from robench.api.params import param

RUN_ID_TAG, HASH_TAG = "robench_run_id", "robench_config_hash"
#: MLflow's run status for each way a run ends
_STATUS: dict[str, str] = {"finished": "FINISHED", "failed": "FAILED", "stopped": "KILLED"}
#: the longest parameter value MLflow stores, and the most parameters one call may log
_MAX_PARAM, _PARAMS_PER_CALL = 6000, 100


@dataclass(frozen=True)
class MLflowParams:
    tracking_uri: str | None = param(None, help="null: MLflow's own (MLFLOW_TRACKING_URI, else its default)")
    experiment: str = param("robench", help="experiment name, created if missing")
    checkpoints: bool = param(True, help="store best.pt and last.pt as artifacts")


class MLflow(Logger[MLflowParams]):
    Params = MLflowParams

    #: set by start: the client and the MLflow run's id
    client: Any = None
    mlflow_run: str = ""

    def start(self, run: RunStart) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise ImportError(f"{exc}; pip install mlflow (or robench[mlflow])") from None
        self.client = MlflowClient(tracking_uri=self.params.tracking_uri)
        experiment = self.client.get_experiment_by_name(self.params.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.params.experiment)
        earlier = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run.run_id}'", max_results=1
        ) if run.resumed else []
        if earlier:
            self.mlflow_run = earlier[0].info.run_id
            return
        created = self.client.create_run(experiment_id, run_name=run.run_id,
                                         tags={RUN_ID_TAG: run.run_id, HASH_TAG: run.config_hash})
        self.mlflow_run = created.info.run_id
        params = [(k, str(v)[:_MAX_PARAM]) for k, v in flat_params(run.config).items()]
        for i in range(0, len(params), _PARAMS_PER_CALL):
            self._log(params=dict(params[i:i + _PARAMS_PER_CALL]))

    def _log(self, metrics: Mapping[str, float] | None = None, step: int = 0,
             params: Mapping[str, str] | None = None) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.mlflow_run,
            metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()],
            params=[Param(k, v) for k, v in (params or {}).items()],
        )

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        self._log({f"step/{k}": v for k, v in metrics.items()}, step)

    def log_epoch(self, epoch: EpochLog) -> None:
        self._log({f"epoch/{k}": v for k, v in epoch.metrics.items() if v is not None}, epoch.epoch)

    def log_results(self, results: Mapping[str, float]) -> None:
        self._log({f"test/{k}": v for k, v in results.items()})

    def log_artifact(self, path: Path, kind: ArtifactKind) -> None:
        if kind == "checkpoint" and not self.params.checkpoints:
            return
        self.client.log_artifact(self.mlflow_run, str(path), artifact_path=f"{kind}s")

    def finish(self, status: Status) -> None:
        if self.client is not None and self.mlflow_run:
            self.client.set_terminated(self.mlflow_run, status=_STATUS[status])
