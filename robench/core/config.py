"""Run configuration: preset < YAML file < CLI flags < ``--set`` overrides.

A configuration is a nested mapping. Plugin sections (``data``, ``arch``, ``defense``)
hold a ``name`` and that plugin's hyperparameters; when a later layer names a different
plugin, the earlier layer's hyperparameters for that section are dropped, since they
belonged to the other plugin. ``attacks`` is the evaluation suite, a list of plugin
names (``pgd-20``) or mappings (``{name: pgd, steps: 50, restarts: 5}``); a later
layer replaces the whole list. Values are validated against typed dataclasses
(:mod:`robench.api.params`); nothing is ever ``eval``-ed.

The base layers are presets from the ``robench.presets`` entry-point group, so the
core names no plugin: ``default`` first (the built-in plugins ship the digits run and
the standard evaluation suite there), then, if one exists, the preset named after the
chosen dataset (its usual training schedule and suite).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.metadata as md
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from robench.api.errors import ConfigError, UserError, one_line
from robench.api.params import build_params, check_exponent, param, shown, suggest
from robench.api.threat import parse_fraction
from robench.core.registry import HOME_DISTRIBUTION, KINDS, get_registry, normalize_name

PRESET_GROUP = "robench.presets"
#: config section -> plugin kind, for the sections that choose one plugin with its params,
#: in the order configs, records and validation's messages take them (``robench list``
#: shows the kinds in another); a test checks that every such kind of KINDS is here
PLUGIN_SECTIONS: dict[str, str] = {KINDS[kind].section: kind for kind in ("dataset", "architecture", "defense")}
#: config section -> plugin kind, for the sections that list plugins
LIST_SECTIONS: dict[str, str] = {k.section: k.name for k in KINDS.values() if k.listed}
#: the evaluation suite: a list of attack plugins, run in order on the points still robust
SUITE_SECTION, SUITE_KIND = KINDS["attack"].section, KINDS["attack"].name
#: where a run's progress goes besides its record: a list of logger plugins, possibly
#: empty; how a run is watched, not what it computes, so not part of the config hash
LOGGER_SECTION, LOGGER_KIND = KINDS["logger"].section, KINDS["logger"].name


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = param(10, ge=1, help="passes over the training split")
    batch_size: int = param(128, ge=1)
    lr: float = param(0.1, gt=0, help="peak learning rate of SGD")
    momentum: float = param(0.9, ge=0, lt=1)
    weight_decay: float = param(5e-4, ge=0)
    nesterov: bool = param(False, help="Nesterov momentum")
    schedule: Literal["piecewise", "cosine", "onecycle", "constant"] = param(
        "cosine", help="learning-rate schedule, set per step"
    )
    milestones: tuple[int, ...] = param(
        (), help="piecewise: lr *= gamma once this many epochs are done, e.g. [100, 105]"
    )
    gamma: float = param(0.1, gt=0, help="piecewise: factor at each milestone")
    peak: float = param(0.4, gt=0, lt=1, help="onecycle: fraction of the run at which lr peaks")
    eps_warmup_epochs: int = param(0, ge=0, help="ramp the training eps linearly from 0 over this many epochs")
    val_steps: int = param(10, ge=1, help="steps of the PGD attack on the validation split after each epoch")
    select: Literal["best", "last"] = param(
        "best", help="checkpoint the record reports: best validation PGD accuracy, or the last epoch"
    )
    precision: Literal["fp32", "bf16", "fp16"] = param(
        "fp32", hashed_at_default=False,  # added after records existed
        help="training forward passes, attacks included, under autocast (fp16: with loss scaling); validation stays fp32",
    )


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = param(512, ge=1)
    n_eval: int | None = param(None, ge=1, help="evaluate on a fixed-seed subset of this size")
    checks: bool = param(True, help="run robench's gradient-masking checks (PGD at eps 0, eps sweep, large eps)")
    check_n: int = param(500, ge=1, help="points the checks use (the first of the evaluated ones)")
    eps_sweep: bool = param(False, help="also record PGD-20 accuracy versus eps")
    sweep_eps: tuple[str, ...] = param((), help='eps values of the sweep, e.g. ["0", "4/255"]; empty: 0 to 2x eps')
    precision: Literal["fp32", "bf16", "fp16"] = param(
        "fp32", hashed_at_default=False,  # added after records existed
        help="the final evaluation's forward passes; keep fp32 unless you know the attacks hold up",
    )
    checkpoints: Literal["both", "selected", "none"] = param(
        "both", hashed_at_default=False,  # added after records existed
        help="evaluate the best and the last checkpoint, only the one train.select reports (half the cost), "
        "or none: train and validate only, no test set (tuning runs)"
    )


@dataclass(frozen=True)
class EngineConfig:
    """How the work is done, not what is computed: not part of the experiment's hash."""

    channels_last: bool = param(False, help="model and batches in channels-last memory format (GPU tensor cores)")
    compile: bool = param(False, help="torch.compile the training forward passes; UAD-AT's double backward stays eager")
    sync_bn: bool = param(False, help="multi-GPU: BatchNorm over the global batch (SyncBatchNorm, CUDA only)")
    deterministic: bool | None = param(
        None,
        help="deterministic kernels, no cuDNN autotuning; "
             "null (default): true on a CPU (bit-exact repeats), false on a GPU (fast)",
    )
    log_every: int = param(
        50, ge=0, help="steps between the training losses sent to loggers that take steps (reading one waits "
                       "for the GPU); 0: epochs only",
    )


@dataclass(frozen=True)
class ThreatConfig:
    norm: str | None = param(None, help="Linf or L2; null: the dataset's default")
    eps: str | None = param(None, help='exact budget such as "8/255"; null: the dataset default')


@dataclass(frozen=True)
class PluginChoice:
    name: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class RunConfig:
    """A validated configuration; plugin params are checked when the plugins are built."""

    seed: int
    device: str
    data: PluginChoice
    arch: PluginChoice
    defense: PluginChoice
    attacks: tuple[PluginChoice, ...]
    threat: ThreatConfig
    train: TrainConfig
    eval: EvalConfig
    engine: EngineConfig = EngineConfig()
    loggers: tuple[PluginChoice, ...] = ()
    data_root: str | None = None
    results_dir: str | None = None
    runs_dir: str | None = None
    download: bool = False
    #: ``data.normalize``: the dataset's mean/std inside the model (false: the network
    #: sees raw [0, 1] inputs, as the official TRADES and MART code trains)
    normalize: bool = True


#: the key of the ``data`` section that robench reads itself, not the dataset plugin
NORMALIZE_KEY = "normalize"


@dataclass(frozen=True)
class _Settings:
    seed: int = param(0, ge=0)
    device: str = param("auto", help="auto, cpu, cuda or cuda:N")
    data_root: str | None = None
    results_dir: str | None = None
    runs_dir: str | None = None
    download: bool = param(False, help="download the dataset if it is missing")


_SETTING_KEYS = [f.name for f in dataclasses.fields(_Settings)]
#: sections of plain keys (no plugin name), merged key by key across layers
VALUE_SECTIONS = ("threat", "train", "eval", "engine")
TOP_LEVEL_KEYS = (
    _SETTING_KEYS
    + list(PLUGIN_SECTIONS)
    + [*LIST_SECTIONS, *VALUE_SECTIONS]
)


# ------------------------------------------------------------------------ layers
_TOO_DEEP = "nested too deeply (no robench setting needs more than a few levels)"


def load_preset(name: str = "default") -> dict[str, Any]:
    """The preset ``name`` from the ``robench.presets`` entry points (a dict or a callable)."""
    found = [ep for ep in md.entry_points(group=PRESET_GROUP) if normalize_name(ep.name) == name]
    if not found:
        return {}
    found.sort(key=lambda ep: (normalize_name(getattr(ep.dist, "name", "")) != HOME_DISTRIBUTION,
                               getattr(ep.dist, "name", "")))
    try:
        obj = found[0].load()
        value = obj() if callable(obj) else obj
    except Exception as exc:
        raise ConfigError(f"preset {name!r} ({found[0].value}) failed to load: {exc}") from exc
    if not isinstance(value, Mapping):
        raise ConfigError(f"preset {name!r} ({found[0].value}) is not a mapping")
    return copy.deepcopy(dict(value))


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"cannot parse config file {p}{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {p}: {one_line(exc) or type(exc).__name__}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(f"cannot parse config file {p}: {_TOO_DEEP}") from None
    except ValueError as exc:  # PyYAML's own constructors: a date 2024-13-45, a 5000-digit int
        raise ConfigError(f"cannot parse config file {p}: {one_line(exc) or type(exc).__name__}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections, not {type(data).__name__}")
    return data


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["defense.steps=5", "seed=1"]`` -> nested dict; values are parsed as YAML scalars.

    Text that YAML cannot turn into a value is kept as the string typed, and the
    parameter's type check says what it expected.
    """
    layer: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects section.key=value, got {shown(item)}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except (yaml.YAMLError, ValueError):  # ValueError: a date 2024-13-45, a 5000-digit int
            value = raw
        except RecursionError:
            raise ConfigError(f"--set {shown(key)}: {_TOO_DEEP}") from None
        parts = key.split(".")
        if any(not part for part in parts) or len(parts) > 2:
            raise ConfigError(f"--set key {shown(key)} must be 'key' or 'section.key'")
        current = layer.get(parts[0])
        if parts[0] in PLUGIN_SECTIONS and isinstance(current, str):  # --set defense=trades --set defense.beta=3
            current = layer[parts[0]] = {"name": current}
        if len(parts) == 1:
            if parts[0] in PLUGIN_SECTIONS and isinstance(value, str) and isinstance(current, dict):
                current["name"] = value  # --set defense.beta=3 --set defense=trades
            else:
                layer[parts[0]] = value
        else:
            section = layer.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise ConfigError(f"--set {shown(key)}: {shown(parts[0])} is not a section")
            section[parts[1]] = value
    return layer


def _as_section(value: Any, key: str, origin: str) -> dict[str, Any]:
    if isinstance(value, str):
        return {"name": value}
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{origin}: section {key!r} must be a mapping, got {shown(value)}")
    return dict(value)


def _as_list(value: Any, origin: str, section: str = SUITE_SECTION) -> list[Any]:
    """A list section (``attacks``, ``loggers``): one entry alone is a list of one."""
    if isinstance(value, (str, Mapping)):
        value = [value]
    if section == LOGGER_SECTION and value is None:
        value = []
    if not isinstance(value, Sequence) or isinstance(value, str) or (section == SUITE_SECTION and not value):
        what = "a non-empty list of attacks" if section == SUITE_SECTION else "a list of loggers (may be empty)"
        raise ConfigError(f"{origin}: {section} must be {what}, got {shown(value)}")
    return [dict(item) if isinstance(item, Mapping) else item for item in value]


def merge(base: dict[str, Any], layer: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """``layer`` over ``base``; a new plugin name discards the old plugin's params."""
    out = copy.deepcopy(base)
    for key, value in layer.items():
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(
                f"{origin}: unknown key {shown(key)}{suggest(str(key), TOP_LEVEL_KEYS)}; "
                f"known keys: {', '.join(TOP_LEVEL_KEYS)}"
            )
        if key in PLUGIN_SECTIONS:
            new = _as_section(value, key, origin)
            old = out.get(key) or {}
            new_name = new.get("name")
            if new_name is not None and (
                not isinstance(new_name, str) or not isinstance(old.get("name"), str)
                or normalize_name(new_name) != normalize_name(old["name"])
            ):
                out[key] = new
            else:
                out[key] = {**old, **new}
        elif key in LIST_SECTIONS:
            out[key] = _as_list(value, origin, key)
        elif key in VALUE_SECTIONS:
            out[key] = {**(out.get(key) or {}), **_as_section(value, key, origin)}
        else:
            out[key] = value
    return out


def resolve(
    config_file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Merge all layers into one raw mapping (not yet validated)."""
    return resolve_over(merge({}, load_preset("default"), "preset 'default'"), config_file, flags, overrides)


def resolve_over(
    base: Mapping[str, Any],
    config_file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    *,
    dataset_preset: bool = True,
) -> dict[str, Any]:
    """``base`` < the chosen dataset's preset (if ``dataset_preset``) < YAML < flags < ``--set``.

    The dataset is the one the layers above the preset choose, so it is read from their
    ``data`` sections alone before the one merge of every layer."""
    layers: list[tuple[Mapping[str, Any], str]] = []
    if config_file is not None:
        layers.append((load_yaml(config_file), str(config_file)))
    if flags:
        layers.append((flags, "command line"))
    if overrides:
        layers.append((parse_set(overrides), "--set"))
    raw = dict(base)
    name = _chosen_dataset(base, layers) if dataset_preset else None
    if name is not None:
        preset = load_preset(name)
        if preset and name != "default":
            raw = merge(raw, preset, f"preset '{name}'")
    for layer, origin in layers:
        raw = merge(raw, layer, origin)
    return raw


def _chosen_dataset(base: Mapping[str, Any], layers: Sequence[tuple[Mapping[str, Any], str]]) -> str | None:
    """The dataset ``layers`` over ``base`` choose (normalized), merged as :func:`merge` does;
    None where they choose none, or where a ``data`` section is malformed: the merge of
    every layer then says so, in the order of the layers."""
    data: dict[str, Any] = {"data": base["data"]} if "data" in base else {}
    try:
        for layer, origin in layers:
            if "data" in layer:
                data = merge(data, {"data": layer["data"]}, origin)
    except ConfigError:
        return None
    section = data.get("data")
    name = section.get("name") if isinstance(section, Mapping) else None
    return normalize_name(name) if isinstance(name, str) and name.strip() else None


def with_loggers(raw: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """``raw`` with the loggers ``names`` added (``--logger``, repeatable): the configured
    ones stay, so ``--logger tensorboard`` keeps the epoch log; one named twice is kept once."""
    out = dict(raw)
    current = _as_list(raw.get(LOGGER_SECTION), "config", LOGGER_SECTION)
    have = {normalize_name(item if isinstance(item, str) else str(item.get("name", ""))) for item in current}
    for name in names:
        if normalize_name(name) not in have:
            current.append(name.strip())
            have.add(normalize_name(name))
    out[LOGGER_SECTION] = current
    return out


# -------------------------------------------------------------------- validation
def _check_budget(eps: str, where: str) -> str:
    """``eps`` stripped, refusing what ThreatModel cannot handle as it should.

    ThreatModel keeps a budget exact, as a Fraction: a long exponent (``1e-99999999``)
    would take minutes to expand, and an L2 budget such as ``1e400`` (L2 has no upper
    bound) would overflow float when its value is first needed, mid-planning. Surrounding
    whitespace is dropped, as ThreatModel does, so an error message quoting the budget
    stays on one line. Text that is no number is left to ThreatModel, which says so.
    """
    eps = eps.strip()
    check_exponent(eps, where)
    try:
        float(parse_fraction(eps))
    except ConfigError:
        pass
    except OverflowError:
        raise ConfigError(f"{where}: {shown(eps)} is too large") from None
    return eps


def _list_choices(items: Any, section: str = SUITE_SECTION) -> list[PluginChoice]:
    """A list section's plugins: names or ``{name: ..., param: value}`` mappings (attacks: at least one)."""
    kind = LIST_SECTIONS[section]
    chosen = []
    for i, item in enumerate(items if isinstance(items, list) else _as_list(items, "config", section)):
        value = {"name": item} if isinstance(item, str) else dict(item) if isinstance(item, Mapping) else {}
        name = value.pop("name", None)
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(
                f"{section}[{i}]: give {'an' if kind[0] in 'aeiou' else 'a'} {kind} name or "
                f"{{name: ..., param: value}}, got {shown(item)}"
            )
        chosen.append(PluginChoice(name.strip(), value))
    if not chosen and section == SUITE_SECTION:
        raise ConfigError(f"{SUITE_SECTION}: choose at least one attack (robench list attack)")
    return chosen


def validate(raw: Mapping[str, Any]) -> RunConfig:
    """Check every key and value except plugin hyperparameters (checked by the plugin's Params).

    ``raw`` need not come from :func:`resolve` (``--resume`` reads it from a checkpoint),
    so sections that are not mappings fail here with a ConfigError too.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config: expected a mapping of sections, got {shown(raw)}")
    settings = build_params(
        _Settings, {k: raw[k] for k in _SETTING_KEYS if k in raw}, "config"
    )
    for key in ("data_root", "results_dir", "runs_dir"):
        if "\0" in (getattr(settings, key) or ""):  # the OS would refuse it mid-planning
            raise ConfigError(f"{key}: a path cannot contain a NUL character, got {shown(getattr(settings, key))}")
    choices = {}
    for section, kind in PLUGIN_SECTIONS.items():
        value = _as_section(raw.get(section), section, "config")
        name = value.pop("name", None)
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{section}.name: choose a {kind} plugin (robench list {kind})")
        if section == "data":
            normalize = value.pop(NORMALIZE_KEY, True)
            if not isinstance(normalize, bool):
                raise ConfigError(f"data.{NORMALIZE_KEY}: expected true or false, got {shown(normalize)}")
        choices[section] = PluginChoice(name.strip(), value)
    suite = _list_choices(raw.get(SUITE_SECTION) or [])
    loggers = _list_choices(raw.get(LOGGER_SECTION) or [], LOGGER_SECTION)
    threat = build_params(ThreatConfig, raw.get("threat") or {}, "threat")
    if threat.eps is not None:
        threat = dataclasses.replace(threat, eps=_check_budget(threat.eps, "threat.eps"))
    train = build_params(TrainConfig, raw.get("train") or {}, "train")
    evaluation = build_params(EvalConfig, raw.get("eval") or {}, "eval")
    evaluation = dataclasses.replace(evaluation, sweep_eps=tuple(
        _check_budget(eps, f"eval.sweep_eps[{i}]") for i, eps in enumerate(evaluation.sweep_eps)
    ))
    engine = build_params(EngineConfig, raw.get("engine") or {}, "engine")
    return RunConfig(
        seed=settings.seed,
        device=settings.device,
        threat=threat,
        train=train,
        eval=evaluation,
        engine=engine,
        attacks=tuple(suite),
        loggers=tuple(loggers),
        data_root=settings.data_root,
        results_dir=settings.results_dir,
        runs_dir=settings.runs_dir,
        download=settings.download,
        normalize=normalize,
        **choices,
    )


#: the value sections whose keys a config hash may leave out, with their dataclass
_VALUE_TYPES: dict[str, type] = {"train": TrainConfig, "eval": EvalConfig}
_NOTHING = object()


def _section_params(section: str, values: Mapping[str, Any]) -> Any:
    """The dataclass behind a section: the value section's own, or the named plugin's ``Params``."""
    if section in _VALUE_TYPES:
        return _VALUE_TYPES[section]
    name = values.get("name")
    if not isinstance(name, str):
        return None
    try:
        return getattr(get_registry(PLUGIN_SECTIONS[section]).load(name), "Params", None)
    except UserError:  # a plugin that does not load has no run to hash
        return None


def _unhashed_defaults(params: Any) -> dict[str, Any]:
    """The defaults of the fields declared ``hashed_at_default=False`` (keys added after
    records existed, with the value every earlier run implicitly had)."""
    if params is None or not dataclasses.is_dataclass(params):
        return {}
    return {f.name: f.default for f in dataclasses.fields(params)
            if f.metadata.get("hashed_at_default") is False and f.default is not dataclasses.MISSING}


def config_hash(resolved: Mapping[str, Any], world_size: int = 1) -> str:
    """Identifies the experiment: the resolved config without seed, device, paths, engine settings and loggers.

    Training on several processes is another computation (BatchNorm statistics and
    UAD-AT's batch spread per shard, unless ``engine.sync_bn``), so a world size above 1
    and ``sync_bn`` enter the hash; one process hashes as it always has."""
    ignore = {"seed", "device", "data_root", "results_dir", "runs_dir", "download", "engine", LOGGER_SECTION}
    payload = {k: v for k, v in resolved.items() if k not in ignore}
    if world_size > 1:
        engine = resolved.get("engine")
        sync_bn = bool(engine.get("sync_bn", False)) if isinstance(engine, Mapping) else False
        payload["distributed"] = {"world_size": world_size, "sync_bn": sync_bn}
    for section in (*_VALUE_TYPES, *PLUGIN_SECTIONS):  # keys added later: old records keep their hash
        if isinstance(payload.get(section), Mapping):
            unhashed = _unhashed_defaults(_section_params(section, payload[section]))
            payload[section] = {k: v for k, v in payload[section].items() if unhashed.get(k, _NOTHING) != v}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
