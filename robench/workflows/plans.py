"""Plans: a config resolved into plugins, suite, threat model, device and folders, with
every bad input refused before any data is loaded or any step is trained.

Evaluating a model (``robench eval``) needs a :class:`ProtocolPlan`: no defense, and no
architecture where the network is the user's own (``--model``). Training one
(``robench run``) needs a :class:`RunPlan`, which adds the defense, the run's id and
folder, the processes and the loggers. Plans are frozen: what a run changes (the device
a torchrun rank is given, rank 0's run id) lives in the executing code, not in the
caller's plan.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
from torch import nn

from robench.api.contracts import Architecture, Dataset, Defense, Plugin
from robench.api.errors import ConfigError, PluginLoadError, UserError
from robench.api.io import ensure_writable
from robench.api.loggers import Logger
from robench.api.model import NormalizedClassifier
from robench.api.params import params_to_dict
from robench.api.threat import ThreatModel
from robench.core.config import (
    LOGGER_SECTION,
    NORMALIZE_KEY,
    PLUGIN_SECTIONS,
    SUITE_SECTION,
    PluginChoice,
    RunConfig,
)
from robench.core.paths import results_root, runs_root
from robench.core.registry import get_registry, plugin_origin
from robench.engine.distributed import SINGLE, World, world_from_env
from robench.engine.machine import resolve_device
from robench.engine.schedule import check_schedule
from robench.evaluation.protocol import SuiteEntry, check_sweep, create_suite
from robench.results.records import new_run_id
from robench.workflows.loggers import create_loggers

#: validation accuracies a defense may pick its best checkpoint by
SELECTION_METRICS = ("val_pgd", "val_clean")
#: the plugin sections each plan builds
_EVAL_SECTIONS, _RUN_SECTIONS = ("data", "arch"), tuple(PLUGIN_SECTIONS)


@dataclass(frozen=True)
class ProtocolPlan:
    """What the evaluation protocol needs to evaluate a model; ``robench eval``'s plan."""

    config: RunConfig
    dataset: Dataset[Any]
    #: None when the network is not an architecture plugin's (``robench eval --model``)
    arch: Architecture[Any] | None
    suite: list[SuiteEntry]
    names: dict[str, str]
    threat: ThreatModel
    device: torch.device
    results_root: Path
    runs_root: Path
    #: the config as recorded, every plugin's parameters filled in
    resolved: dict[str, Any]


@dataclass(frozen=True)
class RunPlan(ProtocolPlan):
    """A training run's plan (``robench run``): a defense trains an architecture's network,
    which is then evaluated as a :class:`ProtocolPlan` would."""

    arch: Architecture[Any]
    defense: Defense[Any]
    #: a new id (time, defense, arch, seed, random suffix), or the resumed run's
    run_id: str
    #: checkpoints, the epoch log and evaluation state: ``<runs root>/<run id>``
    run_dir: Path
    #: the torchrun processes sharing the training (one by default)
    world: World = SINGLE
    #: where progress goes besides the record, each with its registered name
    loggers: list[tuple[str, Logger[Any]]] = field(default_factory=list)


def _create(section: str, choice: PluginChoice) -> tuple[Plugin, str]:
    """One section's plugin and its registered (canonical) name, which records show."""
    registry = get_registry(PLUGIN_SECTIONS[section])
    plugin = registry.create(choice.name, choice.params, where=section)
    return plugin, registry.canonical_name(choice.name)


def _declares_normalize(dataset: type[Plugin] | Plugin) -> bool:
    """Whether a dataset's ``Params`` takes ``normalize`` (then it is passed on to it)."""
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


def _processes(config: RunConfig) -> tuple[World, torch.device]:
    """The processes and the device, checked against what the config asks of them."""
    world = world_from_env()
    device = resolve_device(config.device)
    if config.engine.sync_bn and device.type != "cuda":
        raise ConfigError("engine.sync_bn: SyncBatchNorm needs CUDA devices; drop it on CPU")
    if world.active and config.train.batch_size < world.size:
        raise ConfigError(f"train.batch_size {config.train.batch_size} is the global batch; it must be at least "
                          f"the number of processes ({world.size})")
    return world, device


def _resolved(
    config: RunConfig, plugins: dict[str, Plugin[Any]], names: dict[str, str], suite: list[SuiteEntry],
    threat: ThreatModel, loggers: list[tuple[str, Logger[Any]]],
) -> dict[str, Any]:
    """The config as recorded and hashed; its key order is the records' (committed records
    keep their bytes)."""
    return {
        "seed": config.seed,
        "device": config.device,
        **{s: {"name": names[s], **params_to_dict(plugin.params)} for s, plugin in plugins.items()},
        "data": _data_section(names["data"], plugins["data"], config.normalize),
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


class _Built(NamedTuple):
    """What both plans are made of, built and checked once for both."""

    #: the fields of a :class:`ProtocolPlan`
    fields: dict[str, Any]
    world: World
    defense: Defense[Any] | None
    loggers: list[tuple[str, Logger[Any]]]


def _build(config: RunConfig, sections: tuple[str, ...], *, logged: bool) -> _Built:
    """Every plugin, the suite, the threat model, the processes and the folders, in the
    order their checks have always run, so a config with several faults names the same one."""
    plugins, names = _create_plugins(config, sections)
    suite = create_suite(config.attacks)
    dataset, arch, defense = plugins["data"], plugins.get("arch"), plugins.get("defense")
    assert isinstance(dataset, Dataset) and (arch is None or isinstance(arch, Architecture))
    assert defense is None or isinstance(defense, Defense)
    threat = _threat(config, dataset, names["data"])
    check_sweep(config.eval, threat)
    check_schedule(config.train)
    world, device = _processes(config)
    loggers = create_loggers(config.loggers) if logged else []  # only training is logged
    runs = ensure_writable(runs_root(config.runs_dir))
    fields = dict(
        config=config, dataset=dataset, arch=arch, suite=suite, names=names, threat=threat, device=device,
        results_root=ensure_writable(results_root(config.results_dir)), runs_root=runs,
        resolved=_resolved(config, plugins, names, suite, threat, loggers),
    )
    return _Built(fields, world, defense, loggers)


def plan_protocol(config: RunConfig, *, arch: bool = True) -> ProtocolPlan:
    """The plan of evaluating a model; every bad input fails here, before work starts.

    No defense is built (nothing trains); ``arch=False`` builds no architecture either,
    for a network the user's own code makes (``robench eval --model``)."""
    return ProtocolPlan(**_build(config, _EVAL_SECTIONS if arch else ("data",), logged=False).fields)


def plan_run(config: RunConfig) -> RunPlan:
    """The plan of training, evaluating and recording a run; every bad input fails here,
    before work starts."""
    built = _build(config, _RUN_SECTIONS, logged=True)
    assert built.defense is not None and built.fields["arch"] is not None
    names = built.fields["names"]
    run_id = new_run_id(names["defense"], names["arch"], config.seed)
    return RunPlan(**built.fields, defense=built.defense, run_id=run_id, run_dir=built.fields["runs_root"] / run_id,
                   world=built.world, loggers=built.loggers)


def build_model(plan: ProtocolPlan) -> NormalizedClassifier:
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
