"""Continuing an interrupted run (``robench run --resume``): its plan is rebuilt from the
config its ``last.pt`` carries, so a resumed run is the run it continues, under its id
and in its folder; only where and how it runs may change."""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from robench.api.errors import ConfigError, UserError
from robench.core.config import LOGGER_SECTION, load_preset, validate, with_loggers
from robench.core.paths import runs_root
from robench.engine.checkpoint import Checkpoint, load_checkpoint
from robench.engine.train import LAST as LAST_CHECKPOINT
from robench.engine.train import PREVIOUS as PREVIOUS_CHECKPOINT
from robench.results.records import record_dir
from robench.workflows.loggers import configured_loggers
from robench.workflows.plans import RunPlan, plan_run

#: settings a resumed run may change: where things are, the device and how the work is done
RESUME_SETTINGS = ("device", "data_root", "results_dir", "runs_dir", "engine", LOGGER_SECTION)


def plan_resume(
    target: str, settings: Mapping[str, Any] | None = None, add_loggers: Sequence[str] = (),
) -> tuple[RunPlan, Checkpoint]:
    """Plan the continuation of an interrupted run, from its id, its folder or its last.pt.

    The configuration is the run's own (from the checkpoint); only ``RESUME_SETTINGS``
    may change, and ``add_loggers`` are added to its loggers.
    """
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(RESUME_SETTINGS))
    if unknown:
        raise ConfigError(f"--resume continues a run with its own config; it cannot change {', '.join(unknown)}")
    given = Path(target).expanduser()
    candidates = [given, given / LAST_CHECKPOINT, runs_root(settings.get("runs_dir")) / target / LAST_CHECKPOINT]
    path = next((c for c in candidates if c.is_file() or c.with_name(PREVIOUS_CHECKPOINT).is_file()), None)
    if path is None:
        raise UserError(f"--resume {target}: no run found (looked for {candidates[1]} and {candidates[2]})")
    path, ckpt = _readable_last(path.resolve())
    if ckpt.train_state is None:
        raise UserError(f"--resume: {path} holds no training state (a best.pt or an older checkpoint); give the run's last.pt")
    own = {**ckpt.config, LOGGER_SECTION: configured_loggers(ckpt.config, load_preset().get(LOGGER_SECTION, []))}
    config = validate(with_loggers({**own, **{k: v for k, v in settings.items() if v is not None}}, add_loggers))
    plan = dataclasses.replace(plan_run(config), run_id=ckpt.run_id, run_dir=path.resolve().parent)
    finished = record_dir(plan.results_root, plan.names["data"], plan.threat.slug) / f"{ckpt.run_id}.json"
    if finished.exists():
        raise UserError(f"run {ckpt.run_id} finished already; its record is {finished}")
    return plan, ckpt


def resume_point(ckpt: Checkpoint) -> str:
    """Where a ``last.pt`` stands: "epoch 2", or "epoch 2 and step 5 of epoch 3" when stopped mid-epoch."""
    state = ckpt.train_state or {}
    done, partial = len(state.get("history", [])), state.get("partial")
    return f"epoch {done}" + (f" and step {partial['steps_done']} of epoch {done + 1}" if partial else "")


def _readable_last(path: Path) -> tuple[Path, Checkpoint]:
    """``path`` loaded, or the run's previous ``last.pt`` when this one is missing or damaged
    (a run killed while writing it must still resume)."""
    previous = path.with_name(PREVIOUS_CHECKPOINT)
    try:
        return path, load_checkpoint(path)
    except UserError as exc:
        if path.name != LAST_CHECKPOINT or not previous.is_file():
            raise
        reason = str(exc)
    ckpt = load_checkpoint(previous)
    warnings.warn(f"{reason}; resuming from the checkpoint before it, {previous} (epoch {ckpt.epoch})", stacklevel=2)
    return previous, ckpt
