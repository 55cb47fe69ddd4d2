"""Config layering (preset < YAML < flags < --set) and validation."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import REPO

from robench.api.errors import ConfigError
from robench.core.config import config_hash, load_preset, parse_set, resolve, validate
from robench.workflows.plans import plan_run


def test_default_yaml_reproduces_the_default_run() -> None:
    no_args = plan_run(validate(resolve()))
    from_yaml = plan_run(validate(resolve(REPO / "configs" / "digits" / "default.yaml")))
    assert no_args.resolved == from_yaml.resolved
    assert no_args.names == {"data": "digits", "arch": "smallcnn", "defense": "pgd-at"}
    assert [e.attack.label() for e in no_args.suite] == ["FGSM", "PGD-20", "CW-20", "APGD-CE", "APGD-T"]


def test_layers_override_in_order(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 3\ntrain: {epochs: 7, lr: 0.2}\ndefense: {steps: 4}\n")
    raw = resolve(cfg, {"train": {"epochs": 9}}, ["train.epochs=11", "defense.step_size=1/16"])
    run = validate(raw)
    assert run.seed == 3                       # YAML over preset
    assert run.train.lr == pytest.approx(0.2)  # YAML kept where nothing overrides it
    assert run.train.epochs == 11              # --set over flag over YAML
    assert run.train.batch_size == load_preset("digits")["train"]["batch_size"]  # dataset preset kept
    assert run.defense.params == {"steps": 4, "step_size": "1/16"}
    plan = plan_run(run)
    assert plan.defense.params.step_size == pytest.approx(1 / 16)  # fractions are parsed exactly


def test_new_plugin_name_drops_old_params(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("defense: {name: pgd-at, steps: 4}\n")
    run = validate(resolve(cfg, {"defense": {"name": "standard"}}))
    assert run.defense.name == "standard" and run.defense.params == {}
    same = validate(resolve(cfg, {"defense": {"name": "PGD_AT"}}))  # same plugin, other spelling
    assert same.defense.params == {"steps": 4}


def test_parse_set_types() -> None:
    layer = parse_set(["seed=4", "train.lr=0.5", "defense.random_start=false", "threat.eps=8/255", "device=cpu"])
    assert layer == {
        "seed": 4, "device": "cpu", "train": {"lr": 0.5},
        "defense": {"random_start": False}, "threat": {"eps": "8/255"},
    }



def test_parse_set_plugin_name_and_its_params_in_either_order() -> None:
    """`--set defense=trades --set defense.beta=3` (what a sweep point is) means one plugin section."""
    assert parse_set(["defense=trades", "defense.beta=3"]) == {"defense": {"name": "trades", "beta": 3}}
    assert parse_set(["defense.beta=3", "defense=trades"]) == {"defense": {"beta": 3, "name": "trades"}}
    raw = resolve(None, None, ["defense=trades", "defense.beta=3"])
    assert raw["defense"] == {"name": "trades", "beta": 3}

@pytest.mark.parametrize("item", ["noequals", "=3", "a.b.c=1", "train..lr=1"])
def test_parse_set_rejects_malformed(item: str) -> None:
    with pytest.raises(ConfigError):
        parse_set([item])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trian.epochs=3"], "did you mean 'train'"),
        (["train.epohcs=3"], "did you mean 'epochs'"),
        (["train.epochs=2.5"], "train.epochs: expected an integer"),
        (["train.epochs=true"], "train.epochs: expected an integer"),
        (["train.schedule=linear"], "train.schedule: expected one of"),
        (["train.momentum=1"], "train.momentum: must be < 1"),
        (["eval.n_eval=0"], "eval.n_eval: must be >= 1"),
        (["defense.name="], "defense.name"),
        (["train=3"], "section 'train' must be a mapping"),
        (["seed=abc"], "config.seed"),
    ],
)
def test_validation_errors_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        validate(resolve(None, None, overrides))
    assert message in str(info.value)


def test_plugin_params_validated_before_any_work() -> None:
    with pytest.raises(ConfigError, match=r"attacks\[1\] \(pgd\).restarts: must be >= 1"):
        plan_run(validate(resolve(None, None, ["attacks=[fgsm, {name: pgd, restarts: 0}]"])))


def test_yaml_must_be_a_mapping(tmp_path: Path) -> None:
    cfg = tmp_path / "list.yaml"
    cfg.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        resolve(cfg)


def test_config_hash_ignores_seed_and_paths() -> None:
    a = plan_run(validate(resolve(None, None, ["seed=1", "results_dir=/tmp/x"]))).resolved
    b = plan_run(validate(resolve(None, None, ["seed=2"]))).resolved
    c = plan_run(validate(resolve(None, None, ["seed=2", "train.epochs=3"]))).resolved
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_loggers_are_listed_added_and_left_out_of_the_hash() -> None:
    """The epoch log by default; ``--logger`` adds (once), a config list replaces; no
    logger choice changes the experiment's hash."""
    from robench.core.config import with_loggers

    default = plan_run(validate(resolve(None, None)))
    assert [name for name, _ in default.loggers] == ["jsonl"]
    added = plan_run(validate(with_loggers(resolve(None, None), ["TensorBoard", "tensorboard", "jsonl"])))
    assert [name for name, _ in added.loggers] == ["jsonl", "tensorboard"]
    assert added.resolved["loggers"] == [{"name": "jsonl", "file": "log.jsonl"}, {"name": "tensorboard", "log_dir": None}]
    none = plan_run(validate(resolve(None, None, ["loggers=[]"])))
    assert none.loggers == [] and none.resolved["loggers"] == []
    quiet = plan_run(validate(resolve(None, None, ["engine.log_every=0"])))
    assert len({config_hash(p.resolved) for p in (default, added, none, quiet)}) == 1
    legacy = {k: v for k, v in default.resolved.items() if k != "loggers"}  # a record from before loggers
    assert config_hash(legacy) == config_hash(default.resolved)
    with pytest.raises(ConfigError, match="loggers must be a list"):
        resolve(None, None, ["loggers=5"])
    with pytest.raises(ConfigError, match=r"loggers\[0\]: give a logger name"):
        validate(resolve(None, None, ["loggers=[{file: x}]"]))


def test_several_processes_are_another_experiment_one_is_not() -> None:
    """Per-shard BatchNorm statistics: world size and sync_bn enter the hash above one process."""
    a = plan_run(validate(resolve(None, {}))).resolved
    b = {**a, "engine": {**a["engine"], "sync_bn": True}}  # as a CUDA run plans it
    assert config_hash(a) == config_hash(a, 1) == config_hash(b)  # engine settings: not the experiment
    assert len({config_hash(a), config_hash(a, 2), config_hash(a, 4), config_hash(b, 2)}) == 4


def test_data_normalize_is_robench_s_key_and_recorded_only_when_off() -> None:
    """``data.normalize`` is read by robench, not by the dataset plugin (unless its Params
    declare it); off, it is another experiment; on, configs keep the hash they had."""
    from robench.workflows.plans import build_model

    on = plan_run(validate(resolve(None, None)))
    off = plan_run(validate(resolve(None, None, ["data.normalize=false"])))
    assert (on.config.normalize, off.config.normalize) == (True, False)
    assert "normalize" not in on.resolved["data"] and off.resolved["data"]["normalize"] is False
    assert config_hash(on.resolved) != config_hash(off.resolved)
    raw = build_model(off)
    assert raw.normalize.mean.abs().sum() == 0 and (raw.normalize.std == 1).all()
    assert torch.equal(build_model(on).normalize.mean.flatten(), torch.tensor(on.dataset.mean))
    with pytest.raises(ConfigError, match="data.normalize: expected true or false"):
        validate(resolve(None, None, ["data.normalize=maybe"]))
    # a plugin that declares the parameter (the idx datasets) gets the value, and records it either way
    for value in (True, False):
        plan = plan_run(validate(resolve(None, {"data": {"name": "fashion-mnist"}}, [f"data.normalize={value}"])))
        assert plan.dataset.params.normalize is value and plan.resolved["data"]["normalize"] is value
        assert plan.config.normalize is value


def test_every_layer_resolves_over_the_chosen_dataset_s_preset(tmp_path: Path) -> None:
    """default preset < the dataset's preset < YAML < flags < ``--set``, pinned key by key
    and in order: a plugin named anew drops the earlier layers' params (the preset's
    ``trades-smallcnn``, the YAML's PGD-AT steps), one named again keeps them."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 2\n"
                   "data: {name: fashion-mnist, val_size: 500}\n"
                   "arch: {name: smallcnn, width: 16}\n"
                   "train: {epochs: 4, lr: 0.02}\n"
                   "defense: {name: pgd-at, steps: 4}\n"
                   "attacks: [fgsm, pgd-20]\n")
    flags = {"defense": {"name": "trades", "beta": 3.0}, "train": {"epochs": 6}, "threat": {"eps": "0.2"}}
    raw = resolve(cfg, flags, ["defense.beta=2", "train.batch_size=32", "arch.hidden=64", "eval.n_eval=100"])
    assert list(raw.items()) == [
        ("seed", 2),
        ("device", "auto"),
        ("data", {"name": "fashion-mnist", "val_size": 500}),
        ("arch", {"name": "smallcnn", "width": 16, "hidden": 64}),
        ("defense", {"name": "trades", "beta": 2}),
        ("attacks", ["fgsm", "pgd-20"]),
        ("eval", {"batch_size": 512, "n_eval": 100}),
        ("loggers", ["jsonl"]),
        ("train", {"epochs": 6, "batch_size": 32, "lr": 0.02, "momentum": 0.9, "weight_decay": 0.0,
                   "schedule": "cosine"}),
        ("threat", {"eps": "0.2"}),
    ]
    # the dataset the last layer names picks the preset: digits', not Fashion-MNIST's
    # (no trades-smallcnn, no weight_decay 0), under every layer
    raw = resolve(cfg, {"train": {"epochs": 6}}, ["data=digits"])
    assert list(raw.items()) == [
        ("seed", 2),
        ("device", "auto"),
        ("data", {"name": "digits"}),
        ("arch", {"name": "smallcnn", "width": 16}),
        ("defense", {"name": "pgd-at", "steps": 4}),
        ("attacks", ["fgsm", "pgd-20"]),
        ("eval", {"batch_size": 512, "checkpoints": "selected"}),
        ("loggers", ["jsonl"]),
        ("train", {"epochs": 6, "batch_size": 64, "lr": 0.02, "schedule": "cosine"}),
    ]


def test_the_config_sections_are_the_registry_s_kinds() -> None:
    """The plugin kinds are described once, in the registry; the config's section names
    derive from it, in the order configs and records take them, and cover every kind."""
    from robench.core import config
    from robench.core.registry import KINDS

    assert list(config.PLUGIN_SECTIONS.items()) == [("data", "dataset"), ("arch", "architecture"), ("defense", "defense")]
    assert (config.SUITE_SECTION, config.SUITE_KIND, config.LOGGER_SECTION, config.LOGGER_KIND) == (
        "attacks", "attack", "loggers", "logger")
    assert config.TOP_LEVEL_KEYS == ["seed", "device", "data_root", "results_dir", "runs_dir", "download", "data",
                                     "arch", "defense", "attacks", "loggers", "threat", "train", "eval", "engine"]
    sections = {**config.PLUGIN_SECTIONS, **config.LIST_SECTIONS}
    assert sections == {kind.section: name for name, kind in KINDS.items()}
    assert list(KINDS) == ["defense", "architecture", "dataset", "attack", "logger"]  # robench list's order
