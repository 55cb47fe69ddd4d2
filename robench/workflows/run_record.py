"""A finished run's record, assembled from its plan and what training and evaluation made.

The record is the only input of leaderboards, so it says everything a number depends
on: the resolved config (and its hash), the checkpoints evaluated and the one reported,
the training cost, the code's commit, the numerics switches and the machine.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

import robench
from robench.api.contracts import DataSplits, Defense, Plugin
from robench.api.model import count_parameters
from robench.api.params import params_to_dict
from robench.core.config import config_hash
from robench.core.flops import count_macs
from robench.core.provenance import git_commit
from robench.engine.backend import Backend
from robench.engine.checkpoint import Checkpoint
from robench.engine.machine import describe_machine, device_label
from robench.engine.train import TrainResult
from robench.results.records import RunRecord
from robench.workflows.plans import RunPlan
from robench.workflows.resume import resume_point


@dataclass
class Trained:
    """What training hands to the evaluation and the record: results, weights, data and how they were made."""

    result: TrainResult
    model: nn.Module
    splits: DataSplits
    data_dir: Path | None
    backend: Backend
    #: ``time.perf_counter()`` when the run (or this resumption of it) started
    started: float


def build_record(
    plan: RunPlan, done: Trained, checkpoints: dict[str, dict[str, Any]], resume: Checkpoint | None,
) -> RunRecord:
    """The run's record; ``plan`` is the executing one (this rank's device, rank 0's run id)."""
    cfg, names, trained = plan.config, plan.names, done.result
    notes = [] if resume is None else [f"resumed after {resume_point(resume)}"]
    if trained.best_epoch is None:
        notes.append("no validation split: no best checkpoint; the record reports the last epoch")
    selected = _selected(cfg.train.select, checkpoints, trained.best_epoch)
    previous = float((resume.train_state or {}).get("elapsed_s", 0.0)) if resume is not None else 0.0
    arch = _arch_section(plan, done.model)
    return RunRecord(
        run_id=plan.run_id,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        robench_version=robench.__version__,
        git_commit=git_commit(outputs=(plan.results_root, plan.runs_root)),
        dataset=names["data"],
        data_dir=None if done.data_dir is None else str(done.data_dir),
        backend=done.backend.to_dict(),
        arch=arch,
        cost=training_cost(plan.defense, arch["macs"]),
        validation=_validation(trained, selected),
        defense={"name": names["defense"], "params": _params(plan, "defense"), "changed": changed_params(plan.defense)},
        threat={"norm": plan.threat.norm, "eps": plan.threat.eps, "eps_value": plan.threat.value},
        seed=cfg.seed,
        train=plan.resolved["train"],
        eval=checkpoints[selected]["eval"] if checkpoints else {},
        accuracy=checkpoints[selected]["accuracy"] if checkpoints else {},
        history=[asdict(h) for h in trained.history],
        wall_time_s=round(previous + time.perf_counter() - done.started, 3),
        device=device_label(plan.device) if not plan.world.active else f"{plan.world.size} x {device_label(plan.device)}",
        machine=describe_machine(plan.device),
        config_hash=config_hash(plan.resolved, plan.world.size),
        config=plan.resolved,
        distributed={"world_size": plan.world.size, "sync_bn": cfg.engine.sync_bn and plan.world.active},
        checkpoints=checkpoints,
        selected=selected,
        notes=notes,
        run_dir=str(plan.run_dir),
    )


def changed_params(plugin: Plugin) -> dict[str, Any]:
    """The hyperparameters set away from the plugin's defaults (leaderboards show them)."""
    mine = params_to_dict(plugin.params)
    try:
        defaults = params_to_dict(type(plugin.params)())
    except TypeError:  # a Params dataclass with required fields has no defaults to compare
        return {}
    return {k: v for k, v in mine.items() if defaults.get(k) != v}


def training_cost(defense: Defense[Any], macs: int) -> dict[str, float] | None:
    """What one training image costs per epoch, as the defense counts it (None if it
    does not): forward-pass equivalents F and FLOPs (a multiply-add is 2 FLOPs)."""
    passes = defense.forward_passes_per_image()
    if passes is None:
        return None
    return {"forward_passes_per_image": float(passes), "flops_per_image": 2.0 * macs * float(passes)}


def _params(plan: RunPlan, section: str) -> dict[str, Any]:
    """A plugin section's parameters as resolved, without its name (the record names it apart)."""
    return {k: v for k, v in plan.resolved[section].items() if k != "name"}


def _arch_section(plan: RunPlan, model: nn.Module) -> dict[str, Any]:
    """The architecture as boards compare it: its parameters, size and cost of one forward pass."""
    return {"name": plan.names["arch"], "params": _params(plan, "arch"), "num_params": count_parameters(model),
            "macs": count_macs(model, tuple(plan.dataset.input_shape))}


def _selected(select: str, checkpoints: Mapping[str, Any], best_epoch: int | None) -> str:
    """The checkpoint the record reports: train.select, or the last one where that was
    not evaluated or (without a validation split) does not exist."""
    if checkpoints:
        return select if select in checkpoints else "last"
    return select if best_epoch is not None else "last"


def _validation(trained: TrainResult, selected: str) -> dict[str, Any] | None:
    """The reported checkpoint's validation scores (None without a validation split)."""
    history = trained.history
    epoch = trained.best_epoch if selected == "best" and trained.best_epoch is not None else history[-1].epoch
    stats = history[epoch - 1]
    if stats.val_pgd is None and stats.val_clean is None:
        return None
    return {"epoch": stats.epoch, "val_clean": stats.val_clean, "val_pgd": stats.val_pgd}
