"""One run, end to end: plan -> training -> evaluation -> record -> leaderboard.

:func:`robench.workflows.plans.plan_run` builds and validates everything that can fail
on bad input before any data is loaded or any step is trained; :func:`execute` does the
work, without changing the plan it is given.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from torch import nn

from robench.api.contracts import DataSplits, TensorSplit
from robench.api.errors import UserError
from robench.api.io import atomic_write_text
from robench.core.datasets import load_data
from robench.core.progress import NullReporter, Reporter
from robench.core.seeding import make_generator, seed_everything
from robench.engine.backend import configure as configure_backend
from robench.engine.backend import evaluation_switches
from robench.engine.checkpoint import Checkpoint, load_checkpoint, load_weights
from robench.engine.distributed import broadcast_object, close_process_group, init_process_group
from robench.engine.loggers import RunLoggers
from robench.engine.precision import evaluation_model
from robench.engine.train import EpochStats, TrainResult, train
from robench.evaluation.probe import probe_suite
from robench.evaluation.protocol import run_protocol
from robench.results.leaderboard import refresh_leaderboard
from robench.results.records import RunRecord, SkippedRecord, write_record
from robench.workflows.loggers import finished_on_error, log_outcome, start_loggers
from robench.workflows.plans import RunPlan, build_model
from robench.workflows.run_record import Trained, build_record


@dataclass
class RunOutcome:
    """What a finished run hands back to the command that printed its start: where everything went."""

    record: RunRecord
    record_path: Path
    run_dir: Path
    #: None when the run evaluated nothing on the test set (``eval.checkpoints: none``)
    leaderboard_path: Path | None
    skipped: list[SkippedRecord]


def execute(plan: RunPlan, reporter: Reporter | None = None, resume: Checkpoint | None = None) -> RunOutcome | None:
    """Train, evaluate the best and the last checkpoint (or only the one reported), write the record, refresh the board.

    With ``resume`` (a ``last.pt`` with training state), training continues after its
    epoch under the same run id, and finished evaluations are not redone. Under
    torchrun every rank trains its shard; rank 0 alone evaluates and records, and the
    other ranks return None. What the process group decides (this rank's device, rank
    0's run id and folder) goes into a copy: the caller's plan stays as it was given.
    """
    reporter = reporter or NullReporter()
    world = plan.world
    finished = False
    loggers = RunLoggers()
    device = init_process_group(world, plan.device)
    try:
        run = dataclasses.replace(plan, device=device)
        if world.active:  # rank 0's id: one run folder, one record
            run_id = broadcast_object(plan.run_id, world)
            run_dir = plan.run_dir.parent / run_id if resume is None else plan.run_dir
            run = dataclasses.replace(run, run_id=run_id, run_dir=run_dir)
        if world.is_main:
            loggers = start_loggers(run.loggers, run.resolved, run.run_id, run.run_dir, world.size,
                                    run.config.engine.log_every, resume)
        with finished_on_error(loggers):
            trained = _train(run, reporter, resume, loggers)
        finished = True
    finally:
        close_process_group(finished)  # no barrier after a failure: the other ranks may be gone
    if not world.is_main:
        return None
    with finished_on_error(loggers):
        outcome = _evaluate_and_record(run, reporter, resume, trained)
        log_outcome(loggers, outcome.record.checkpoints, outcome.record.selected,
                    [trained.result.files[k] for k in ("best", "last") if k in trained.result.files],
                    outcome.record_path)
    return outcome


def _train(plan: RunPlan, reporter: Reporter, resume: Checkpoint | None, loggers: RunLoggers) -> Trained:
    """The model trained (or its training continued), checked early where it can fail fast."""
    cfg, names = plan.config, plan.names
    started = time.perf_counter()
    seed_everything(cfg.seed)
    backend = configure_backend(plan.device, cfg.engine.deterministic)
    model = build_model(plan)  # before the data: a bad architecture fails in seconds
    # so does one the defense cannot train
    plan.defense.check_model(model, cast(tuple[int, int, int], tuple(plan.dataset.input_shape)))
    splits, data_dir = load_data(plan.dataset, names["data"], cfg.data_root, download=cfg.download)
    if plan.device.type != "cpu":  # the whole uint8 split lives on the GPU; batches are drawn there
        val = None if splits.val is None else splits.val.to(plan.device)
        splits = DataSplits(splits.train.to(plan.device), splits.test.to(plan.device), val)
    if cfg.eval.checkpoints != "none":
        with evaluation_switches():  # a broken attack fails now, not after the training
            probe_suite(model, splits.test, [entry.attack for entry in plan.suite], plan.threat, plan.device)
    trained = train(
        model, plan.defense, splits.train, plan.threat, cfg.train,
        device=plan.device, generator=make_generator(cfg.seed), augment=plan.dataset.augment,
        reporter=reporter, val_split=splits.val, val_batch_size=cfg.eval.batch_size, seed=cfg.seed,
        run_dir=plan.run_dir, meta={"config": plan.resolved, "run_id": plan.run_id}, resume=resume,
        engine=cfg.engine, world=plan.world, loggers=loggers,
    )
    return Trained(trained, model, splits, data_dir, backend, started)


def _evaluate_checkpoint(
    plan: RunPlan, model: nn.Module, test: TensorSplit, name: str, stats: EpochStats, reporter: Reporter,
) -> dict[str, Any]:
    """The protocol on one checkpoint; its result is kept in the run folder, so a
    resumed run does not redo a finished evaluation."""
    saved = plan.run_dir / f"eval-{name}.json"
    if saved.is_file():
        done = json.loads(saved.read_text(encoding="utf-8"))
        if done.get("epoch") == stats.epoch:
            return done
    outcome = run_protocol(
        evaluation_model(model, plan.config.eval.precision, plan.device), test, plan.suite, plan.threat, plan.config.eval,
        device=plan.device, seed=plan.config.seed, reporter=reporter, state_dir=plan.run_dir / f"eval-state-{name}",
    )
    result = {
        "epoch": stats.epoch,
        "val_clean": stats.val_clean,
        "val_pgd": stats.val_pgd,
        "accuracy": outcome.result.accuracy,
        "eval": outcome.record_section(plan.suite),
    }
    atomic_write_text(saved, json.dumps(result, indent=2) + "\n")
    return result


def _evaluate_checkpoints(
    plan: RunPlan, reporter: Reporter, trained: TrainResult, model: nn.Module, test: TensorSplit
) -> dict[str, dict[str, Any]]:
    """The protocol on the last and the best checkpoint, or (``eval.checkpoints:
    selected``) on the one the record reports only, or (``none``) on neither; a
    checkpoint that is both is evaluated once and kept under both names, so the record
    says so."""
    history = trained.history
    if plan.config.eval.checkpoints == "none":  # tuning: the test set stays unseen
        return {}
    if trained.best_epoch is None:
        wanted = ["last"]
    elif plan.config.eval.checkpoints == "selected" and trained.best_epoch != history[-1].epoch:
        wanted = [plan.config.train.select]
    else:
        wanted = ["last", "best"]
    checkpoints: dict[str, dict[str, Any]] = {}
    for name in wanted:
        if name == "best" and trained.best_epoch != history[-1].epoch:
            best = load_checkpoint(trained.files["best"])
            load_weights(model, best.state_dict, trained.files["best"])
            checkpoints[name] = _evaluate_checkpoint(plan, model, test, "best", history[best.epoch - 1], reporter)
        elif "last" in checkpoints:  # best is the last epoch, evaluated already
            checkpoints[name] = dict(checkpoints["last"])
        else:  # the model holds the last epoch's weights
            checkpoints[name] = _evaluate_checkpoint(plan, model, test, "last", history[-1], reporter)
    if "best" in checkpoints:
        checkpoints["best"]["selected_by"] = plan.defense.selection_metric
    return checkpoints


def _evaluate_and_record(plan: RunPlan, reporter: Reporter, resume: Checkpoint | None, done: Trained) -> RunOutcome:
    """The checkpoints evaluated, the record written (never over another) and its board refreshed."""
    with evaluation_switches():  # no TF32 ("fp32" means fp32), no cuDNN autotuning per batch shape
        checkpoints = _evaluate_checkpoints(plan, reporter, done.result, done.model, done.splits.test)
    record = build_record(plan, done, checkpoints, resume)
    try:
        record_path = write_record(record, plan.results_root)
    except FileExistsError:
        raise UserError(f"record {record.run_id} exists already; not overwriting") from None
    if not record.evaluated:  # nothing a board could rank
        return RunOutcome(record, record_path, plan.run_dir, None, [])
    board, skipped = refresh_leaderboard(
        plan.results_root, record.dataset, record.threat_slug, str(plan.threat)
    )
    return RunOutcome(record, record_path, plan.run_dir, board, skipped)
