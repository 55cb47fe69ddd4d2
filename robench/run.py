"""One run, end to end: config -> registry -> plugins -> engine -> record -> leaderboard.

:func:`plan_run` builds and validates everything that can fail on bad input before
any data is loaded or any step is trained; :func:`execute` does the work.
"""
from __future__ import annotations

import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import robench
from robench.api import Architecture, DataSplits, Dataset, Defense, Plugin
from robench.checkpoint import save_checkpoint
from robench.config import PLUGIN_SECTIONS, SUITE_SECTION, PluginChoice, RunConfig, config_hash
from robench.engine.train import EpochStats, train
from robench.errors import ConfigError, DataNotFoundError, PluginLoadError, RobenchError, UserError
from robench.io import ensure_writable
from robench.leaderboard import refresh_leaderboard
from robench.flops import count_macs
from robench.model import NormalizedClassifier, count_parameters
from robench.params import params_to_dict
from robench.paths import data_root, results_root, runs_root, source_checkout
from robench.progress import NullReporter, Reporter
from robench.protocol import SuiteEntry, check_sweep, create_suite, run_protocol
from robench.records import RunRecord, SkippedRecord, new_run_id, write_record
from robench.registry import get_registry
from robench.seeding import make_generator, seed_everything
from robench.threat import ThreatModel

#: Train/val/test splits drawn by a dataset plugin use this seed, so that every run,
#: whatever its own seed, is evaluated on the same held-out images.
DATA_SPLIT_SEED = 0


@dataclass
class RunPlan:
    config: RunConfig
    dataset: Dataset
    arch: Architecture
    defense: Defense
    suite: list[SuiteEntry]
    names: dict[str, str]
    threat: ThreatModel
    device: torch.device
    results_root: Path
    runs_root: Path
    resolved: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunOutcome:
    record: RunRecord
    record_path: Path
    checkpoint_path: Path
    leaderboard_path: Path
    skipped: list[SkippedRecord]


def resolve_device(spec: str) -> torch.device:
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device: unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {spec!r} requested but no CUDA device is available")
    return device


def _create(section: str, choice: PluginChoice) -> tuple[Plugin, str]:
    registry = get_registry(PLUGIN_SECTIONS[section])
    plugin = registry.create(choice.name, choice.params, where=section)
    return plugin, registry.canonical_name(choice.name)


def plan_run(config: RunConfig, sections: tuple[str, ...] = tuple(PLUGIN_SECTIONS)) -> RunPlan:
    """Resolve plugins and the threat model; every bad input fails here, before work starts.

    ``sections`` limits which plugins are built (``robench eval`` needs no defense).
    """
    plugins: dict[str, Plugin] = {}
    names: dict[str, str] = {}
    for section in sections:
        plugins[section], names[section] = _create(section, getattr(config, section))
    suite = create_suite(config.attacks)
    dataset = plugins["data"]
    assert isinstance(dataset, Dataset)
    default = getattr(dataset, "threat_model", None)
    if not isinstance(default, ThreatModel) and (config.threat.norm is None or config.threat.eps is None):
        raise PluginLoadError(f"dataset '{names['data']}' declares no default threat model; set threat.eps and threat.norm")
    try:
        threat = ThreatModel(
            norm=config.threat.norm or default.norm,  # type: ignore[union-attr]
            eps=config.threat.eps or default.eps,  # type: ignore[union-attr]
        )
    except ConfigError as exc:
        raise ConfigError(f"threat: {exc}") from None
    if threat.value == 0:
        raise ConfigError("threat: eps must be > 0 (eps 0 is clean accuracy, which every run reports)")
    check_sweep(config.eval, threat)
    resolved: dict[str, Any] = {
        "seed": config.seed,
        "device": config.device,
        **{s: {"name": names[s], **params_to_dict(plugins[s].params)} for s in sections},
        SUITE_SECTION: [{"name": e.name, **e.params} for e in suite],
        "threat": {"norm": threat.norm, "eps": threat.eps},
        "train": params_to_dict(config.train),
        "eval": params_to_dict(config.eval),
        "data_root": config.data_root,
        "results_dir": config.results_dir,
        "runs_dir": config.runs_dir,
        "download": config.download,
    }
    return RunPlan(
        config=config,
        dataset=dataset,
        arch=plugins["arch"],  # type: ignore[arg-type]
        defense=plugins.get("defense"),  # type: ignore[arg-type]
        suite=suite,
        names=names,
        threat=threat,
        device=resolve_device(config.device),
        results_root=ensure_writable(results_root(config.results_dir)),
        runs_root=ensure_writable(runs_root(config.runs_dir)),
        resolved=resolved,
    )


def _check_splits(splits: Any, dataset: Dataset, name: str) -> DataSplits:
    if not isinstance(splits, DataSplits):
        raise RobenchError(f"dataset '{name}' returned {type(splits).__name__}, not robench.api.DataSplits")
    for split_name in ("train", "test"):
        split = getattr(splits, split_name)
        if tuple(split.x.shape[1:]) != tuple(dataset.input_shape) or len(split) != split.x.shape[0]:
            raise RobenchError(
                f"dataset '{name}' {split_name} split has images of shape {tuple(split.x.shape)}, "
                f"expected (N, {', '.join(map(str, dataset.input_shape))})"
            )
    return splits


def fetch_data(dataset: Dataset, name: str, root: Path) -> None:
    """Download ``dataset`` into ``root`` (only ever on the user's request)."""
    ensure_writable(root)
    try:
        dataset.fetch(root)
    except DataNotFoundError:
        raise
    except Exception as exc:  # network and archive errors: one line, not a traceback
        raise DataNotFoundError(f"{name}: download into {root} failed: {type(exc).__name__}: {exc}") from exc


def load_data(dataset: Dataset, name: str, root: Path, *, download: bool = False) -> DataSplits:
    """The dataset's splits; a missing dataset says where robench looked and how to get it."""
    try:
        splits = dataset.load(root, DATA_SPLIT_SEED)
    except DataNotFoundError as exc:
        if not download:
            raise DataNotFoundError(
                f"{name}: {exc}. Looked in {root} (--data-root, else $ROBENCH_DATA, else "
                f"~/.cache/robench/data); get it with `robench data fetch {name}` or "
                f"`robench run --download ...`"
            ) from None
        fetch_data(dataset, name, root)
        splits = dataset.load(root, DATA_SPLIT_SEED)
    return _check_splits(splits, dataset, name)


def build_model(plan: RunPlan) -> nn.Module:
    net = plan.arch.build(plan.dataset.num_classes, tuple(plan.dataset.input_shape))
    if not isinstance(net, nn.Module):
        raise PluginLoadError(f"architecture '{plan.names['arch']}' built {type(net).__name__}, not an nn.Module")
    return NormalizedClassifier(net, plan.dataset.mean, plan.dataset.std).to(plan.device)


def git_commit() -> str | None:
    root = source_checkout()
    if root is None or not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _params(plan: RunPlan, section: str) -> dict[str, Any]:
    return {k: v for k, v in plan.resolved[section].items() if k != "name"}


def execute(plan: RunPlan, reporter: Reporter | None = None) -> RunOutcome:
    reporter = reporter or NullReporter()
    cfg = plan.config
    names = plan.names
    run_id = new_run_id(names["defense"], names["arch"], cfg.seed)
    started = time.perf_counter()
    seed_everything(cfg.seed)
    model = build_model(plan)  # before the data: a bad architecture fails in seconds
    splits = load_data(plan.dataset, names["data"], data_root(cfg.data_root), download=cfg.download)
    if plan.device.type != "cpu":  # the whole uint8 split lives on the GPU; batches are drawn there
        splits = DataSplits(*(s.to(plan.device) if s is not None else None for s in (splits.train, splits.test, splits.val)))
    gen = make_generator(cfg.seed)
    history: list[EpochStats] = train(
        model, plan.defense, splits.train, plan.threat, cfg.train,
        device=plan.device, generator=gen, augment=lambda x: plan.dataset.augment(x, gen),
        reporter=reporter,
    )
    run_dir = plan.runs_root / run_id
    checkpoint = save_checkpoint(
        run_dir / "model.pt", model, config=plan.resolved, run_id=run_id, epoch=len(history)
    )
    outcome = run_protocol(
        model, splits.test, plan.suite, plan.threat, cfg.eval,
        device=plan.device, seed=cfg.seed, reporter=reporter, state_dir=run_dir / "eval-state",
    )
    record = RunRecord(
        run_id=run_id,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        robench_version=robench.__version__,
        git_commit=git_commit(),
        dataset=names["data"],
        arch={
            "name": names["arch"],
            "params": _params(plan, "arch"),
            "num_params": count_parameters(model),
            "macs": count_macs(model, tuple(plan.dataset.input_shape)),
        },
        defense={"name": names["defense"], "params": _params(plan, "defense")},
        threat={"norm": plan.threat.norm, "eps": plan.threat.eps, "eps_value": plan.threat.value},
        seed=cfg.seed,
        train=plan.resolved["train"],
        eval=outcome.record_section(plan.suite),
        accuracy=outcome.result.accuracy,
        history=[vars(h) for h in history],
        wall_time_s=round(time.perf_counter() - started, 3),
        device=device_label(plan.device),
        config_hash=config_hash(plan.resolved),
        config=plan.resolved,
    )
    try:
        record_path = write_record(record, plan.results_root)
    except FileExistsError:  # pragma: no cover - run ids carry a random suffix
        raise UserError(f"record {record.run_id} exists already; not overwriting") from None
    board, skipped = refresh_leaderboard(
        plan.results_root, record.dataset, record.threat_slug, str(plan.threat)
    )
    return RunOutcome(record, record_path, checkpoint, board, skipped)
