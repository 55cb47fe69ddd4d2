"""``robench eval``: evaluate a saved model under the evaluation protocol.

The checkpoint carries the config that built the model, so only what changes is
given: the suite (default: the ``default`` preset's, i.e. the standard suite with
AutoAttack), the threat model, the subset, the sweep. Nothing about the original run
record changes; the result is an evaluation report (:mod:`robench.results.reports`, one JSON
file, never overwritten) beside the records in the results folder, where boards and
the RobustBench export read it, or at ``--out``. An interrupted evaluation resumes
where it stopped when rerun with the same settings (state under the runs folder).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

import robench
from robench.api.errors import UserError
from robench.api.io import atomic_write_text
from robench.core.config import NORMALIZE_KEY, SUITE_SECTION, load_preset, resolve_over, validate
from robench.core.datasets import load_data
from robench.core.progress import NullReporter, Reporter
from robench.core.provenance import git_commit
from robench.core.registry import get_registry
from robench.engine.backend import configure as configure_backend
from robench.engine.backend import evaluation_switches
from robench.engine.checkpoint import file_digest, load_checkpoint, load_state_dict_file, load_weights
from robench.engine.machine import describe_machine, device_label
from robench.evaluation.probe import probe_suite
from robench.evaluation.protocol import ProtocolResult, run_protocol
from robench.results.leaderboard import refresh_leaderboard
from robench.results.leaderboard.external import EXTERNAL
from robench.results.records import record_dir
from robench.results.reports import EvalReport, new_report_id, report_dir
from robench.workflows.model_factory import FactoryModel, load_factory
from robench.workflows.plans import ProtocolPlan, build_model, plan_protocol

#: what a checkpoint's config contributes; the rest comes from the defaults and flags
_FROM_CHECKPOINT = ("seed", "data", "arch", "defense", "threat", "train")


@dataclass(frozen=True)
class EvalSource:
    """What is evaluated: a robench checkpoint (its run, epoch and config), a plain
    state dict of the architecture's network (``plain``: weights robench did not save,
    such as the official TRADES and MART checkpoints), or a network built by the user's
    own factory (``factory``), with or without a weights file."""

    #: the checkpoint or weights file; for a factory without weights, its source file
    path: Path
    state_dict: Mapping[str, Tensor]
    #: the checkpoint's resolved config; empty for plain weights
    config: Mapping[str, Any]
    #: the run that wrote it; "" for plain weights
    run_id: str
    epoch: int | None
    plain: bool = False
    factory: FactoryModel | None = None

    @classmethod
    def checkpoint(cls, path: Path) -> EvalSource:
        path = path.expanduser().resolve()
        ckpt = load_checkpoint(path)
        return cls(path, ckpt.state_dict, ckpt.config, ckpt.run_id, ckpt.epoch)

    @classmethod
    def weights(cls, path: Path) -> EvalSource:
        path = path.expanduser().resolve()
        return cls(path, load_state_dict_file(path), {}, "", None, plain=True)

    @classmethod
    def from_factory(cls, spec: str, weights: Path | None = None) -> EvalSource:
        factory = load_factory(spec)
        if weights is not None:
            path = weights.expanduser().resolve()
            return cls(path, load_state_dict_file(path), {}, "", None, factory=factory)
        return cls(factory.source or Path(spec), {}, {}, "", None, factory=factory)

    @property
    def label(self) -> str:
        """The checkpoint's or weights file's name, or the factory spec."""
        if self.factory is not None:
            return self.factory.spec + (f" + {self.path.name}" if self.state_dict else "")
        return self.path.stem

    def digest(self) -> str:
        """What identifies the evaluated model: the file's sha256; for a factory, that of
        its spec and source, with the weights file's."""
        if self.factory is None:
            return file_digest(self.path)
        parts = [self.factory.digest(), file_digest(self.path) if self.state_dict else ""]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@dataclass
class EvalPlan:
    source: EvalSource
    digest: str
    run: ProtocolPlan
    out_path: Path
    state_dir: Path
    report_id: str


def plan_eval(
    source: Path | EvalSource,
    *,
    config_file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    out: Path | None = None,
) -> EvalPlan:
    """Plan the evaluation of ``source`` (a checkpoint path, or :class:`EvalSource`).

    A checkpoint brings its model, data and threat model; plain weights take them from
    ``flags`` and ``overrides`` (``data.name``, ``arch.name``, ``data.normalize``)."""
    source = EvalSource.checkpoint(source) if isinstance(source, Path) else source
    defaults = load_preset("default")
    base = {k: source.config[k] for k in _FROM_CHECKPOINT if k in source.config}
    base[SUITE_SECTION] = defaults.get(SUITE_SECTION)
    base["eval"] = defaults.get("eval", {})
    base.setdefault("defense", defaults.get("defense"))  # a config needs one; eval never builds it
    if source.factory is not None:  # nor an architecture for the factory's network
        base["arch"] = {"name": EXTERNAL}
    raw = resolve_over(base, config_file, flags, overrides, dataset_preset=False)
    plan = plan_protocol(validate(raw), arch=source.factory is None)
    if source.factory is not None:  # the factory's network, not an architecture plugin
        plan = dataclasses.replace(
            plan, names={**plan.names, "arch": source.factory.spec},
            resolved={**plan.resolved, "arch": {"name": EXTERNAL, "model": source.factory.spec}},
        )
    digest = source.digest()
    key = json.dumps(
        [digest, plan.resolved[SUITE_SECTION], plan.resolved["threat"], plan.resolved["eval"], plan.resolved["seed"],
         plan.resolved["data"], plan.resolved["arch"]],
        sort_keys=True, default=str,
    )
    state_dir = plan.runs_root / "eval-state" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if out is not None:
        out_path = out.expanduser().resolve()
        report_id = out_path.stem
    else:
        report_id = new_report_id(source.run_id or ("model" if source.factory else ""), source.label)
        out_path = report_dir(plan.results_root, plan.names["data"], plan.threat.slug) / f"{report_id}.json"
    if out_path.exists():
        raise UserError(f"{out_path} exists already; not overwriting (choose another --out)")
    return EvalPlan(source, digest, plan, out_path, state_dir, report_id)


def built_for(config: Mapping[str, Any], run: ProtocolPlan) -> str:
    """What a checkpoint's model was built for next to what ``run`` asks for, where they differ.

    Weights that do not fit usually mean an override (``--set arch.width=...``, another
    dataset and so another class count) that the checkpoint cannot honour; saying
    which one is more useful than the tensor shapes alone. Empty when nothing differs.
    """
    saved_arch, asked_arch = dict(config.get("arch") or {}), dict(run.resolved.get("arch") or {})
    saved_data = dict(config.get("data") or {})
    saved_classes = _num_classes(saved_data)
    asked_classes = getattr(run.dataset, "num_classes", None)
    same_data = saved_data.get("name") == run.names["data"] and saved_classes == asked_classes
    if saved_arch == asked_arch and same_data:
        return ""
    return (f"it was built for {_arch_label(saved_arch, asked_arch)} on "
            f"{_data_label(saved_data.get('name'), saved_classes)}, asked for "
            f"{_arch_label(asked_arch, saved_arch)} on {_data_label(run.names['data'], asked_classes)}")


def _arch_label(mine: Mapping[str, Any], other: Mapping[str, Any]) -> str:
    """``smallcnn width=32``: the name and the parameters that differ from ``other``."""
    name = str(mine.get("name", "unknown"))
    if name != other.get("name"):
        return name
    changed = [f"{k}={v}" for k, v in mine.items() if k != "name" and other.get(k) != v]
    return " ".join([name, *changed])


def _data_label(name: object, classes: int | None) -> str:
    return f"{name} ({classes} classes)" if classes is not None else str(name)


def _num_classes(section: Mapping[str, Any]) -> int | None:
    """The class count of a checkpoint's dataset, if its plugin is still installed."""
    try:
        # normalize is robench's key (recorded as false for raw-input runs), not every plugin's
        params = {k: v for k, v in section.items() if k not in ("name", NORMALIZE_KEY)}
        return int(get_registry("dataset").create(str(section["name"]), params, where="data").num_classes)
    except Exception:  # only for a message: an unknown or changed plugin just leaves it out
        return None


def execute_eval(
    plan: EvalPlan, reporter: Reporter | None = None
) -> tuple[EvalReport, Path, ProtocolResult, Path | None]:
    """Evaluate, write the report, and refresh the board it joins: (report, its path,
    the protocol's result, the board's path or None)."""
    reporter = reporter or NullReporter()
    run = plan.run
    started = time.perf_counter()
    backend = configure_backend(run.device, run.config.engine.deterministic)
    source = plan.source
    model = _model(source, run)
    model.to(run.device)
    splits, _ = load_data(run.dataset, run.names["data"], run.config.data_root, download=run.config.download)
    test = splits.test.to(run.device) if run.device.type != "cpu" else splits.test
    with evaluation_switches():  # no TF32 ("fp32" means fp32), no cuDNN autotuning per batch shape
        probe_suite(model, test, [entry.attack for entry in run.suite], run.threat, run.device)
        outcome = run_protocol(
            model, test, run.suite, run.threat, run.config.eval,
            device=run.device, seed=run.config.seed, reporter=reporter, state_dir=plan.state_dir,
        )
    report = EvalReport(
        report_id=plan.report_id,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        robench_version=robench.__version__,
        git_commit=git_commit(outputs=(run.results_root, run.runs_root)),
        checkpoint=str(source.path) if source.factory is None or source.state_dict else "",
        checkpoint_sha256=plan.digest,
        source_run_id=source.run_id,
        source_checkpoint=source.label,
        source_epoch=source.epoch,
        dataset=run.names["data"],
        arch=run.names["arch"],
        defense=str((source.config.get("defense") or {}).get("name", "unknown" if source.factory is None else EXTERNAL)),
        threat={"norm": run.threat.norm, "eps": run.threat.eps, "eps_value": run.threat.value},
        seed=run.config.seed,
        eval=outcome.record_section(run.suite),
        accuracy=outcome.result.accuracy,
        wall_time_s=round(time.perf_counter() - started, 3),
        device=device_label(run.device),
        machine=describe_machine(run.device),
        config=run.resolved,
        backend={**backend.to_dict(), "tf32_training": None},
    )
    path = atomic_write_text(plan.out_path, report.to_json(), overwrite=False)
    return report, path, outcome, _refresh_board(run, report, path)


def _model(source: EvalSource, run: ProtocolPlan) -> nn.Module:
    """The network to evaluate, its weights loaded: robench's model (the dataset's
    normalisation in front, unless turned off), or the factory's as it is."""
    if source.factory is not None:
        model = source.factory.module
        if source.state_dict:
            load_weights(model, source.state_dict, source.path, context=f"the network of {source.factory.spec}")
        return model
    model = build_model(run)
    if source.plain:  # the architecture's own layout; its load_state_dict adapts known variants
        load_weights(model.net, source.state_dict, source.path)
    else:
        load_weights(model, source.state_dict, source.path, context=built_for(source.config, run))
    return model


def _refresh_board(run: ProtocolPlan, report: EvalReport, path: Path) -> Path | None:
    """A report beside the records of its run's board changes that board (it may add
    the AutoAttack column a run lacked), and a report of a network robench did not train
    is that board's external row; reports elsewhere (``--out``) change nothing."""
    if path.parent != report_dir(run.results_root, report.dataset, report.threat_slug):
        return None
    if report.source_run_id and not record_dir(run.results_root, report.dataset, report.threat_slug).is_dir():
        return None  # (a model robench did not train makes its board's external row, runs or not)
    board, _ = refresh_leaderboard(run.results_root, report.dataset, report.threat_slug, str(run.threat))
    return board
