"""One run, end to end: config -> registry -> plugins -> engine -> record -> leaderboard.

:func:`plan_run` builds and validates everything that can fail on bad input before
any data is loaded or any step is trained; :func:`execute` does the work.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

import robench
from robench.api.contracts import Architecture, Dataset, DataSplits, Defense, Plugin, TensorSplit
from robench.api.errors import ConfigError, DataNotFoundError, PluginLoadError, UserError
from robench.api.io import atomic_write_text, ensure_writable
from robench.api.loggers import Logger
from robench.api.model import NormalizedClassifier, count_parameters
from robench.api.params import params_to_dict
from robench.api.threat import ThreatModel
from robench.core.config import (
    LOGGER_SECTION,
    NORMALIZE_KEY,
    PLUGIN_SECTIONS,
    SUITE_SECTION,
    PluginChoice,
    RunConfig,
    config_hash,
    load_preset,
    validate,
    with_loggers,
)
from robench.core.flops import count_macs
from robench.core.paths import DataPlace, data_places, results_root, runs_root, source_checkout
from robench.core.progress import NullReporter, Reporter
from robench.core.registry import get_registry, plugin_origin
from robench.core.seeding import make_generator, seed_everything
from robench.engine.backend import Backend, exact_fp32
from robench.engine.backend import configure as configure_backend
from robench.engine.checkpoint import Checkpoint, load_checkpoint, load_weights
from robench.engine.distributed import (
    SINGLE,
    World,
    broadcast_object,
    close_process_group,
    init_process_group,
    world_from_env,
)
from robench.engine.loggers import RunLoggers
from robench.engine.precision import evaluation_model
from robench.engine.schedule import check_schedule
from robench.engine.train import LAST as LAST_CHECKPOINT
from robench.engine.train import PREVIOUS as PREVIOUS_CHECKPOINT
from robench.engine.train import EpochStats, TrainResult, train
from robench.evaluation.probe import probe_suite
from robench.evaluation.protocol import SuiteEntry, check_sweep, create_suite, run_protocol
from robench.results.leaderboard import refresh_leaderboard
from robench.results.records import RunRecord, SkippedRecord, new_run_id, record_dir, write_record
from robench.workflows.loggers import configured_loggers, create_loggers, finished_on_error, log_outcome, start_loggers

#: validation accuracies a defense may pick its best checkpoint by
SELECTION_METRICS = ("val_pgd", "val_clean")
#: Train/val/test splits drawn by a dataset plugin use this seed, so that every run,
#: whatever its own seed, is evaluated on the same held-out images.
DATA_SPLIT_SEED = 0


@dataclass
class RunPlan:
    config: RunConfig
    dataset: Dataset[Any]
    #: None when the network is not an architecture plugin's (``robench eval --model``)
    arch: Architecture[Any] | None
    #: None when only evaluating (``robench eval``)
    defense: Defense[Any] | None
    suite: list[SuiteEntry]
    names: dict[str, str]
    threat: ThreatModel
    device: torch.device
    results_root: Path
    runs_root: Path
    resolved: dict[str, Any] = field(default_factory=dict)
    #: a new id (time, defense, arch, seed, random suffix), or the resumed run's
    run_id: str = ""
    #: checkpoints, the epoch log and evaluation state: ``<runs root>/<run id>``
    run_dir: Path = Path()
    #: the torchrun processes sharing the training (one by default)
    world: World = SINGLE
    #: where progress goes besides the record, each with its registered name
    loggers: list[tuple[str, Logger[Any]]] = field(default_factory=list)

    @property
    def trainer(self) -> Defense[Any]:
        """The defense of a plan that trains (``robench run``), which always names one."""
        if self.defense is None:
            raise ValueError("this plan has no defense: it was made for evaluation only")
        return self.defense


@dataclass
class _Trained:
    """What training hands to the evaluation: results, weights, data and how they were made."""

    result: TrainResult
    model: nn.Module
    splits: DataSplits
    data_dir: Path | None
    backend: Backend
    started: float


@dataclass
class RunOutcome:
    record: RunRecord
    record_path: Path
    run_dir: Path
    #: None when the run evaluated nothing on the test set (``eval.checkpoints: none``)
    leaderboard_path: Path | None
    skipped: list[SkippedRecord]


def resolve_device(spec: str) -> torch.device:
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device: unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: {spec!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {spec!r} requested but no CUDA device is available")
    return device


def _create(section: str, choice: PluginChoice) -> tuple[Plugin, str]:
    registry = get_registry(PLUGIN_SECTIONS[section])
    plugin = registry.create(choice.name, choice.params, where=section)
    return plugin, registry.canonical_name(choice.name)


def _declares_normalize(dataset: type[Plugin] | Plugin) -> bool:
    params = dataset.Params
    return dataclasses.is_dataclass(params) and NORMALIZE_KEY in {f.name for f in dataclasses.fields(params)}


def _with_normalize(choice: PluginChoice, normalize: bool) -> PluginChoice:
    """``data.normalize`` is robench's; a dataset whose ``Params`` declares ``normalize``
    (its mean and std may depend on it) gets the value too."""
    try:
        cls = get_registry(PLUGIN_SECTIONS["data"]).load(choice.name)
    except UserError:
        return choice  # an unknown or broken plugin: creating it gives the error, with its context
    return PluginChoice(choice.name, {**choice.params, NORMALIZE_KEY: normalize}) if _declares_normalize(cls) else choice


def _data_section(name: str, dataset: Plugin, normalize: bool) -> dict[str, Any]:
    """The ``data`` section as recorded: ``normalize`` appears where the plugin declares
    it or where it is off, so that configs from before robench owned the key hash as they did."""
    section = {"name": name, **params_to_dict(dataset.params)}
    if not normalize:
        section[NORMALIZE_KEY] = False
    return section


def _create_plugins(config: RunConfig, sections: tuple[str, ...]) -> tuple[dict[str, Plugin[Any]], dict[str, str]]:
    """Each section's plugin and its registered name; a defense's selection metric checked."""
    plugins: dict[str, Plugin[Any]] = {}
    names: dict[str, str] = {}
    for section in sections:
        choice = getattr(config, section)
        choice = _with_normalize(choice, config.normalize) if section == "data" else choice
        plugins[section], names[section] = _create(section, choice)
    defense = plugins.get("defense")
    if defense is not None and getattr(defense, "selection_metric", None) not in SELECTION_METRICS:
        raise PluginLoadError(
            f"defense '{names['defense']}' has selection_metric {getattr(defense, 'selection_metric', None)!r}; "
            f"expected one of {', '.join(SELECTION_METRICS)}"
        )
    return plugins, names


def _threat(config: RunConfig, dataset: Dataset[Any], name: str) -> ThreatModel:
    """The configured threat model, completed by the dataset's published one."""
    default = getattr(dataset, "threat_model", None)
    norm, eps = config.threat.norm, config.threat.eps
    if not isinstance(default, ThreatModel):
        if norm is None or eps is None:
            raise PluginLoadError(f"dataset '{name}' declares no default threat model; set threat.eps and threat.norm")
    else:
        norm, eps = norm or default.norm, eps or default.eps
    try:
        threat = ThreatModel(norm=norm, eps=eps)
    except ConfigError as exc:
        raise ConfigError(f"threat: {exc}") from None
    if threat.value == 0:
        raise ConfigError("threat: eps must be > 0 (eps 0 is clean accuracy, which every run reports)")
    return threat


def _machine(config: RunConfig) -> tuple[World, torch.device]:
    """The processes and the device, checked against what the config asks of them."""
    world = world_from_env()
    device = resolve_device(config.device)
    if config.engine.sync_bn and device.type != "cuda":
        raise ConfigError("engine.sync_bn: SyncBatchNorm needs CUDA devices; drop it on CPU")
    if world.active and config.train.batch_size < world.size:
        raise ConfigError(f"train.batch_size {config.train.batch_size} is the global batch; it must be at least "
                          f"the number of processes ({world.size})")
    return world, device


def plan_run(config: RunConfig, sections: tuple[str, ...] = tuple(PLUGIN_SECTIONS)) -> RunPlan:
    """Resolve plugins and the threat model; every bad input fails here, before work starts.

    ``sections`` limits which plugins are built (``robench eval`` needs no defense).
    """
    plugins, names = _create_plugins(config, sections)
    suite = create_suite(config.attacks)
    dataset, arch, defense = plugins["data"], plugins.get("arch"), plugins.get("defense")
    assert isinstance(dataset, Dataset) and (arch is None or isinstance(arch, Architecture))
    assert defense is None or isinstance(defense, Defense)
    threat = _threat(config, dataset, names["data"])
    check_sweep(config.eval, threat)
    check_schedule(config.train)
    world, device = _machine(config)
    loggers = create_loggers(config.loggers) if "defense" in sections else []  # only training is logged
    resolved: dict[str, Any] = {
        "seed": config.seed,
        "device": config.device,
        **{s: {"name": names[s], **params_to_dict(plugins[s].params)} for s in sections},
        "data": _data_section(names["data"], dataset, config.normalize),
        SUITE_SECTION: [{"name": e.name, **e.params} for e in suite],
        "threat": {"norm": threat.norm, "eps": threat.eps},
        "train": params_to_dict(config.train),
        "eval": params_to_dict(config.eval),
        "engine": params_to_dict(config.engine),
        LOGGER_SECTION: [{"name": name, **params_to_dict(logger.params)} for name, logger in loggers],
        "data_root": config.data_root,
        "results_dir": config.results_dir,
        "runs_dir": config.runs_dir,
        "download": config.download,
    }
    runs = ensure_writable(runs_root(config.runs_dir))
    run_id = new_run_id(names.get("defense", "eval"), names.get("arch", "model"), config.seed)
    return RunPlan(
        config=config, dataset=dataset, arch=arch, defense=defense, suite=suite, names=names, threat=threat,
        device=device, results_root=ensure_writable(results_root(config.results_dir)), runs_root=runs,
        resolved=resolved, run_id=run_id, run_dir=runs / run_id, world=world, loggers=loggers,
    )


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
    plan = plan_run(config)
    plan.run_id, plan.run_dir = ckpt.run_id, path.resolve().parent
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
    """``path`` loaded, or the run's previous ``last.pt`` when this one is missing or damaged."""
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


def _check_splits(splits: Any, dataset: Dataset, name: str) -> DataSplits:
    """A plugin's splits are what the engine expects; if not, the plugin is to blame (exit 2)."""
    if not isinstance(splits, DataSplits):
        raise PluginLoadError(f"{plugin_origin(dataset)}: load() returned {type(splits).__name__}, not robench.api.DataSplits")
    for split_name in ("train", "test", "val"):
        split = getattr(splits, split_name)
        if split is None and split_name == "val":
            continue
        if not isinstance(split, TensorSplit):
            raise PluginLoadError(
                f"{plugin_origin(dataset)}: its {split_name} split is {type(split).__name__}, not robench.api.TensorSplit"
            )
        if tuple(split.x.shape[1:]) != tuple(dataset.input_shape) or len(split) != split.x.shape[0]:
            raise PluginLoadError(
                f"{plugin_origin(dataset)}: its {split_name} split has images of shape {tuple(split.x.shape)} "
                f"and {len(split)} labels, expected (N, {', '.join(map(str, dataset.input_shape))}) and N labels"
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


def find_data(dataset: Dataset, name: str, explicit: str | Path | None) -> tuple[DataPlace | None, list[DataPlace]]:
    """The first folder of the search order that holds ``dataset``'s files, and the whole order."""
    places = data_places(explicit, tuple(getattr(dataset, "system_folders", ()) or ()))
    for place in places:
        try:
            found = dataset.has_files(place.path)
        except Exception as exc:  # a plugin's own bug must not look like missing data
            raise PluginLoadError(
                f"{plugin_origin(dataset)}: has_files({place.path}) raised {type(exc).__name__}: {exc}"
            ) from exc
        if found:
            return place, places
    return None, places


def _ways_to_get(dataset: Dataset, name: str) -> str:
    hint = str(getattr(dataset, "install_hint", "") or "")
    return f"get it with `robench data fetch {name}`" + (f" or {hint}" if hint else "") + " (or `robench run --download ...`)"


def load_data(
    dataset: Dataset, name: str, explicit: str | Path | None = None, *, download: bool = False
) -> tuple[DataSplits, Path | None]:
    """The dataset's splits and the folder they were read from (None for embedded data).

    The folder is the first of :func:`robench.core.paths.data_places` that has the files; a
    missing dataset names every folder looked at and the ways to get it.
    """
    if not getattr(dataset, "needs_files", True):
        return _check_splits(dataset.load(data_places(explicit)[0].path, DATA_SPLIT_SEED), dataset, name), None
    place, places = find_data(dataset, name, explicit)
    root = places[0].path if place is None else place.path
    if place is None and not download:
        looked = ", ".join(map(str, places))
        raise DataNotFoundError(f"{name}: not found; looked in {looked}; {_ways_to_get(dataset, name)}")
    if place is None:
        fetch_data(dataset, name, root)
    try:
        splits = dataset.load(root, DATA_SPLIT_SEED)
    except DataNotFoundError as exc:
        if not download or place is None:
            raise DataNotFoundError(f"{name}: {exc}; {_ways_to_get(dataset, name)}") from None
        fetch_data(dataset, name, root)  # a damaged copy, and the user asked for a download
        splits = dataset.load(root, DATA_SPLIT_SEED)
    return _check_splits(splits, dataset, name), root


def build_model(plan: RunPlan) -> NormalizedClassifier:
    """The architecture's network behind the dataset's normalisation (``data.normalize``),
    or behind an identity one (mean 0, std 1: the same layout, so checkpoints look alike)."""
    if plan.arch is None:
        raise PluginLoadError("this run names no architecture plugin to build")
    net = plan.arch.build(plan.dataset.num_classes, cast(tuple[int, int, int], tuple(plan.dataset.input_shape)))
    if not isinstance(net, nn.Module):
        raise PluginLoadError(f"{plugin_origin(plan.arch)}: build() returned {type(net).__name__}, not a torch nn.Module")
    channels = int(plan.dataset.input_shape[0])
    mean, std = (plan.dataset.mean, plan.dataset.std) if plan.config.normalize else ((0.0,) * channels, (1.0,) * channels)
    return NormalizedClassifier(net, mean, std).to(plan.device)


#: the commit of a copy of the source without its .git folder (a tree copied to a GPU machine)
COMMIT_ENV = "ROBENCH_COMMIT"


def git_commit(root: Path | None = None, outputs: Sequence[Path] = ()) -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted changes to tracked files); where
    the source has no ``.git``, ``$ROBENCH_COMMIT`` as given, else None.

    Files under ``outputs`` (the results and runs folders) do not count: a results folder
    inside the checkout, such as this repository's ``leaderboards/``, is rewritten by every
    run, and the code that made the next record is still the commit's."""
    root = root if root is not None else source_checkout()
    if root is None or not (root / ".git").exists():
        return os.environ.get(COMMIT_ENV) or None
    excluded = [f":(exclude){rel}" for rel in _inside(root, outputs)]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded],
            capture_output=True, text=True, timeout=10,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _inside(root: Path, folders: Sequence[Path]) -> list[str]:
    """The ``folders`` inside ``root``, relative to it (posix); the checkout itself never."""
    top = root.resolve()
    inside = []
    for folder in folders:
        try:
            rel = Path(folder).resolve().relative_to(top)
        except ValueError:
            continue
        if rel.parts:
            inside.append(rel.as_posix())
    return inside


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def changed_params(plugin: Plugin) -> dict[str, Any]:
    """The hyperparameters set away from the plugin's defaults (leaderboards show them)."""
    mine = params_to_dict(plugin.params)
    try:
        defaults = params_to_dict(type(plugin.params)())
    except TypeError:  # a Params dataclass with required fields has no defaults to compare
        return {}
    return {k: v for k, v in mine.items() if defaults.get(k) != v}


def _params(plan: RunPlan, section: str) -> dict[str, Any]:
    return {k: v for k, v in plan.resolved[section].items() if k != "name"}


def _evaluate_checkpoint(
    plan: RunPlan, model: nn.Module, test: TensorSplit, run_dir: Path, name: str, stats: EpochStats,
    reporter: Reporter,
) -> dict[str, Any]:
    """The protocol on one checkpoint; its result is kept in the run folder, so a
    resumed run does not redo a finished evaluation."""
    saved = run_dir / f"eval-{name}.json"
    if saved.is_file():
        done = json.loads(saved.read_text(encoding="utf-8"))
        if done.get("epoch") == stats.epoch:
            return done
    outcome = run_protocol(
        evaluation_model(model, plan.config.eval.precision, plan.device), test, plan.suite, plan.threat, plan.config.eval,
        device=plan.device, seed=plan.config.seed, reporter=reporter, state_dir=run_dir / f"eval-state-{name}",
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


def execute(plan: RunPlan, reporter: Reporter | None = None, resume: Checkpoint | None = None) -> RunOutcome | None:
    """Train, evaluate the best and the last checkpoint (or only the one reported), write the record, refresh the board.

    With ``resume`` (a ``last.pt`` with training state), training continues after its
    epoch under the same run id, and finished evaluations are not redone. Under
    torchrun every rank trains its shard; rank 0 alone evaluates and records, and the
    other ranks return None.
    """
    reporter = reporter or NullReporter()
    world = plan.world
    plan.device = init_process_group(world, plan.device)
    finished = False
    loggers = RunLoggers()
    try:
        if world.active:  # rank 0's id: one run folder, one record
            plan.run_id = broadcast_object(plan.run_id, world)
            plan.run_dir = plan.run_dir.parent / plan.run_id if resume is None else plan.run_dir
        if world.is_main:
            loggers = start_loggers(plan.loggers, plan.resolved, plan.run_id, plan.run_dir, world.size,
                                    plan.config.engine.log_every, resume)
        with finished_on_error(loggers):
            trained = _train(plan, reporter, resume, loggers)
        finished = True
    finally:
        close_process_group(finished)  # no barrier after a failure: the other ranks may be gone
    if not world.is_main:
        return None
    with finished_on_error(loggers):
        outcome = _evaluate_and_record(plan, reporter, resume, trained)
        log_outcome(loggers, outcome.record.checkpoints, outcome.record.selected,
                    [trained.result.files[k] for k in ("best", "last") if k in trained.result.files],
                    outcome.record_path)
    return outcome


def _train(plan: RunPlan, reporter: Reporter, resume: Checkpoint | None, loggers: RunLoggers) -> _Trained:
    cfg, names = plan.config, plan.names
    run_id, run_dir = plan.run_id, plan.run_dir
    started = time.perf_counter()
    seed_everything(cfg.seed)
    backend = configure_backend(plan.device, cfg.engine.deterministic)
    model = build_model(plan)  # before the data: a bad architecture fails in seconds
    # so does one the defense cannot train
    plan.trainer.check_model(model, cast(tuple[int, int, int], tuple(plan.dataset.input_shape)))
    splits, data_dir = load_data(plan.dataset, names["data"], cfg.data_root, download=cfg.download)
    if plan.device.type != "cpu":  # the whole uint8 split lives on the GPU; batches are drawn there
        val = None if splits.val is None else splits.val.to(plan.device)
        splits = DataSplits(splits.train.to(plan.device), splits.test.to(plan.device), val)
    if cfg.eval.checkpoints != "none":
        with exact_fp32():  # a broken attack fails now, not after the training
            probe_suite(model, splits.test, [entry.attack for entry in plan.suite], plan.threat, plan.device)
    trained = train(
        model, plan.trainer, splits.train, plan.threat, cfg.train,
        device=plan.device, generator=make_generator(cfg.seed), augment=plan.dataset.augment,
        reporter=reporter, val_split=splits.val, val_batch_size=cfg.eval.batch_size, seed=cfg.seed,
        run_dir=run_dir, meta={"config": plan.resolved, "run_id": run_id}, resume=resume,
        engine=cfg.engine, world=plan.world, loggers=loggers,
    )
    return _Trained(trained, model, splits, data_dir, backend, started)


def _evaluate_checkpoints(
    plan: RunPlan, reporter: Reporter, trained: TrainResult, model: nn.Module, test: TensorSplit
) -> dict[str, dict[str, Any]]:
    """The protocol on the last and the best checkpoint, or (``eval.checkpoints:
    selected``) on the one the record reports only, or (``none``) on neither; a
    checkpoint that is both is evaluated once and kept under both names, so the record
    says so."""
    history, run_dir = trained.history, plan.run_dir
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
            checkpoints[name] = _evaluate_checkpoint(plan, model, test, run_dir, "best", history[best.epoch - 1], reporter)
        elif "last" in checkpoints:  # best is the last epoch, evaluated already
            checkpoints[name] = dict(checkpoints["last"])
        else:  # the model holds the last epoch's weights
            checkpoints[name] = _evaluate_checkpoint(plan, model, test, run_dir, "last", history[-1], reporter)
    if "best" in checkpoints:
        checkpoints["best"]["selected_by"] = plan.trainer.selection_metric
    return checkpoints


def _arch_section(plan: RunPlan, model: nn.Module) -> dict[str, Any]:
    return {"name": plan.names["arch"], "params": _params(plan, "arch"), "num_params": count_parameters(model),
            "macs": count_macs(model, tuple(plan.dataset.input_shape))}


def training_cost(defense: Defense[Any], macs: int) -> dict[str, float] | None:
    """What one training image costs per epoch, as the defense counts it (None if it
    does not): forward-pass equivalents F and FLOPs (a multiply-add is 2 FLOPs)."""
    passes = defense.forward_passes_per_image()
    if passes is None:
        return None
    return {"forward_passes_per_image": float(passes), "flops_per_image": 2.0 * macs * float(passes)}


def _evaluate_and_record(plan: RunPlan, reporter: Reporter, resume: Checkpoint | None, done: _Trained) -> RunOutcome:
    cfg, names = plan.config, plan.names
    run_id, model, trained = plan.run_id, done.model, done.result
    history = trained.history
    notes = [] if resume is None else [f"resumed after {resume_point(resume)}"]
    with exact_fp32():  # "fp32" evaluation means fp32: no TF32 tensor-core matmuls
        checkpoints = _evaluate_checkpoints(plan, reporter, trained, model, done.splits.test)
    if trained.best_epoch is None:
        notes.append("no validation split: no best checkpoint; the record reports the last epoch")
    selected = _selected(cfg.train.select, checkpoints, trained.best_epoch)
    previous = float((resume.train_state or {}).get("elapsed_s", 0.0)) if resume is not None else 0.0
    arch = _arch_section(plan, model)
    record = RunRecord(
        run_id=run_id,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        robench_version=robench.__version__,
        git_commit=git_commit(outputs=(plan.results_root, plan.runs_root)),
        dataset=names["data"],
        data_dir=None if done.data_dir is None else str(done.data_dir),
        backend=done.backend.to_dict(),
        arch=arch,
        cost=training_cost(plan.trainer, arch["macs"]),
        validation=_validation(trained, selected),
        defense={"name": names["defense"], "params": _params(plan, "defense"),
                 "changed": changed_params(plan.trainer)},
        threat={"norm": plan.threat.norm, "eps": plan.threat.eps, "eps_value": plan.threat.value},
        seed=cfg.seed,
        train=plan.resolved["train"],
        eval=checkpoints[selected]["eval"] if checkpoints else {},
        accuracy=checkpoints[selected]["accuracy"] if checkpoints else {},
        history=[asdict(h) for h in history],
        wall_time_s=round(previous + time.perf_counter() - done.started, 3),
        device=device_label(plan.device) if not plan.world.active else f"{plan.world.size} x {device_label(plan.device)}",
        config_hash=config_hash(plan.resolved, plan.world.size),
        config=plan.resolved,
        distributed={"world_size": plan.world.size, "sync_bn": cfg.engine.sync_bn and plan.world.active},
        checkpoints=checkpoints,
        selected=selected,
        notes=notes,
        run_dir=str(plan.run_dir),
    )
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
