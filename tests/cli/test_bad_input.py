"""Bad input never crashes robench: it validates, or fails with one line and exit code 2.

Two parts:

* Property-based (hypothesis): random ``--set`` overrides, CLI-flag layers, YAML files
  and raw config mappings go through the real ``resolve`` -> ``validate`` ->
  ``plan_run`` (plugins built through the real entry-point registry; nothing is
  trained). Every case must either plan fine or raise a :class:`robench.api.errors.UserError`
  whose message is one non-empty line; any other exception fails the test. The runs are
  derandomized and use no example database, so CI sees the same cases every time;
  ``pytest -s`` prints how many were tried.
* Explicit cases through the real CLI in a subprocess: exit code 2, exactly one stderr
  line naming the problem, no traceback; and a run whose output folder fills up (a tiny
  tmpfs where mounting is allowed, else a file size limit) fails cleanly, leaving no
  torn or temporary file.
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import errno
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, Union

import pytest
import yaml
from conftest import REPO, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robench.api.errors import UserError, WriteError
from robench.api.io import atomic_write_bytes
from robench.core.config import (
    LOGGER_KIND,
    LOGGER_SECTION,
    PLUGIN_SECTIONS,
    SUITE_KIND,
    SUITE_SECTION,
    TOP_LEVEL_KEYS,
    EngineConfig,
    EvalConfig,
    ThreatConfig,
    TrainConfig,
    resolve,
    validate,
)
from robench.core.registry import get_registry
from robench.workflows.plans import plan_run

# ------------------------------------------------------------------ bookkeeping
#: examples tried per property, and how they ended ("valid" or the error class)
TRIED: collections.Counter[str] = collections.Counter()
ELAPSED: dict[str, float] = {}
OUTCOMES: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
#: derandomized, no database: the same examples on every machine and every run
FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    """With ``pytest -s``: how many examples each property tried, how they ended, how long."""
    yield
    if TRIED:
        print(f"\ntest_bad_input: {sum(TRIED.values())} hypothesis examples in {sum(ELAPSED.values()):.1f} s")
        for name, n in TRIED.items():
            ends = ", ".join(f"{k} {v}" for k, v in OUTCOMES[name].most_common())
            print(f"  {name}: {n} examples ({ends}) in {ELAPSED.get(name, 0):.1f} s")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """cwd, HOME and every robench folder inside one temp dir: plan_run creates the
    runs and results folders it is given, and random relative paths land here."""
    root = tmp_path_factory.mktemp("bad-input")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for var, sub in (("HOME", "home"), ("XDG_DATA_HOME", "xdg-data"), ("XDG_CACHE_HOME", "xdg-cache"),
                         ("ROBENCH_RUNS", "runs"), ("ROBENCH_RESULTS", "results"), ("ROBENCH_DATA", "data")):
            mp.setenv(var, str(root / sub))
        yield root


def outcome(action: Callable[[], object]) -> str:
    """'valid', or the name of the UserError raised, checked to be one non-empty line.

    Any other exception propagates, and hypothesis reports the (shrunk) input.
    """
    try:
        action()
    except UserError as exc:
        message = str(exc)
        assert message.strip(), f"{type(exc).__name__} with an empty message"
        assert message.splitlines() == [message], f"{type(exc).__name__} message is not one line: {message!r}"
        return type(exc).__name__
    return "valid"


def record(prop: str, result: str) -> None:
    TRIED[prop] += 1
    OUTCOMES[prop][result] += 1


# --------------------------------------------------------------------- vocabulary
# Keys and their types come from the real dataclasses: the config sections' and every
# installed plugin's Params, so a new hyperparameter is fuzzed without editing this file.
def _hints(cls: type) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in typing.get_type_hints(cls).items() if k in fields}


def _plugin_vocabulary(kind: str) -> tuple[list[str], dict[str, Any]]:
    """(names, hyperparameter -> type) of every installed plugin of ``kind``."""
    registry = get_registry(kind)
    keys: dict[str, Any] = {}
    for name in registry.names():
        try:
            for key, tp in _hints(registry.load(name).Params).items():
                keys.setdefault(key, tp)
        except UserError:  # a broken third-party plugin: its name is still worth trying
            pass
    return registry.names(), keys


PLUGIN_VOCAB = {section: _plugin_vocabulary(kind) for section, kind in PLUGIN_SECTIONS.items()}
ATTACK_NAMES, ATTACK_KEYS = _plugin_vocabulary(SUITE_KIND)
LOGGER_NAMES, LOGGER_KEYS = _plugin_vocabulary(LOGGER_KIND)
#: section -> key -> type, for every key a section knows
SECTION_KEYS: dict[str, dict[str, Any]] = {
    "train": _hints(TrainConfig),
    "eval": _hints(EvalConfig),
    "engine": _hints(EngineConfig),
    "threat": _hints(ThreatConfig),
    **{section: {"name": str, **keys} for section, (_, keys) in PLUGIN_VOCAB.items()},
}
SETTING_KEYS = [k for k in TOP_LEVEL_KEYS if k not in SECTION_KEYS and k not in (SUITE_SECTION, LOGGER_SECTION)]
NAME_SPELLINGS = ["nope", "", " ", "PGD_AT", "pgd-20", "pgd-0", "pgd--1", "cw-20", "fgsm-3", "digits/x",
                  "timm/resnet18", "timm/nope", "timm/", "hf-hub:x", "Digits", " smallcnn ", "a\nb"]

# strings a user might type, or that have broken parsers before; none is an absolute
# path, and '~' expands to the sandbox's HOME, so random paths stay inside the sandbox
SPECIAL_STRINGS = [
    "", " ", "8/255", "1/0", "-1/255", "abc", "0", "-0", "1e-3", "1e400", "1e-99999999", "1.5e+9999",
    "nan", "inf", "-inf", "null", "none", "None", "~", "true", "false", "yes", "no", "Linf", "L2", "linf",
    "l3", "auto", "cpu", "cuda", "cuda:0", "cuda:-1", "meta", "CPU", "piecewise", "cosine", "onecycle",
    "constant", "best", "last", "fp32", "bf16", "fp16", "[100, 105]", "{a: 1}", "a: b", "- x", "ünïcødé",
    "日本語", "🙂", "a\x00b", "a\nb", " 2\n", "\t", "'", '"', "\\", "%", "1_000", "0x10", "0o7", "١٢",
    "2001-13-45", "12:30:00", "!!binary aGVsbG8=", "!!python/object:os.system", "&a [*a]", "*a",
    "9" * 5000, "1" + "0" * 400, ".", "..", "out", "out/sub", "8/255/1",
]
PATHS = ["out", "out/sub", ".", "..", "", " ", "a\x00b", "/proc/robench-nope/x", "/dev/null/x", "\n"]
DEVICES = ["auto", "cpu", "CPU", " cpu ", "cuda", "cuda:0", "cuda:-1", "cuda:x", "cpu:99999999999999999999",
           "meta", "mps", "tpu", "", "0", "gpu"]

text = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="/~\\"), max_size=12
)
strings = st.one_of(st.sampled_from(SPECIAL_STRINGS), text)
ints = st.one_of(
    st.integers(-3, 3), st.integers(),
    st.sampled_from([2**31, 2**63, -(2**63), 10**30, -(10**30), 10**400, -(10**4000)]),
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, -0.1, 1e-12, 0.5, 0.999, 1.0, 1e308, float("nan"), float("inf"), float("-inf")]),
)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, strings)
#: a key of any section, a near miss, or junk
any_key = st.one_of(
    st.sampled_from(sorted({k for keys in SECTION_KEYS.values() for k in keys} | set(TOP_LEVEL_KEYS))),
    st.sampled_from(["Steps", "stepz", "lr ", "", "name", "a.b", "1"]),
    text,
)
#: anything YAML can hold: scalars, lists, mappings with odd keys, nested
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(any_key, ints, st.none(), st.booleans()), inner, max_size=3),
    ),
    max_leaves=8,
)


def plausible(tp: Any) -> st.SearchStrategy[Any]:
    """Values of type ``tp``, edge cases included (0, negative, huge, '8/255', nan)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return st.one_of(st.sampled_from(args), st.sampled_from([str(a).upper() for a in args]))
    if origin in (Union, types.UnionType):
        return st.one_of(st.none(), *(plausible(a) for a in args if a is not type(None)))
    if origin in (list, tuple):
        return st.lists(plausible(args[0] if args else str), max_size=3)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.one_of(st.integers(0, 40), st.integers(0, 40), ints)
    if tp is float:
        return st.one_of(st.floats(0, 1), st.sampled_from(["8/255", "1/16", "0.5", "1/0", "-1/255", "1e-3"]), floats)
    return strings


def value_for(section: str, key: str) -> st.SearchStrategy[Any]:
    """Mostly values of the type the key takes, sometimes anything at all."""
    if key == "name":
        typed = st.sampled_from(PLUGIN_VOCAB[section][0] + NAME_SPELLINGS)
    elif key == "device":
        typed = st.sampled_from(DEVICES)
    elif key in ("data_root", "results_dir", "runs_dir"):
        typed = st.one_of(st.sampled_from(PATHS), text)
    elif key in ("eps", "sweep_eps"):
        typed = st.one_of(strings, st.lists(strings, max_size=3))
    elif key in ("seed", "download"):
        typed = plausible(int if key == "seed" else bool)
    else:
        typed = plausible(SECTION_KEYS[section][key])
    return st.one_of(typed, typed, typed, values)


section_and_key = st.one_of(
    st.sampled_from([(s, k) for s, keys in SECTION_KEYS.items() for k in keys]),
    st.sampled_from([("", k) for k in SETTING_KEYS]),
)
attack_item = st.one_of(
    st.sampled_from(ATTACK_NAMES + ["pgd-20", "pgd-50", "cw-20", "pgd-0", "nope", "", "PGD_20"]),
    st.fixed_dictionaries(
        {"name": st.one_of(st.sampled_from(ATTACK_NAMES + ["pgd-20", "nope"]), values)},
        optional={k: st.one_of(plausible(tp), values) for k, tp in ATTACK_KEYS.items()},
    ),
    values,
)
suite = st.one_of(st.lists(attack_item, max_size=4), attack_item)
logger_item = st.one_of(
    st.sampled_from(LOGGER_NAMES + ["nope", "", "JSONL", "tensor_board"]),
    st.fixed_dictionaries(
        {"name": st.one_of(st.sampled_from(LOGGER_NAMES + ["nope"]), values)},
        optional={k: st.one_of(plausible(tp), values) for k, tp in LOGGER_KEYS.items()},
    ),
    values,
)
logger_list = st.one_of(st.lists(logger_item, max_size=3), logger_item)


@st.composite
def edits(draw: st.DrawFn) -> tuple[str, str | None, Any]:
    """One change to a config: (top-level key, key inside it or None, new value or DELETE)."""
    kind = draw(st.sampled_from(["key", "key", "key", "key", "section", "attacks", "loggers", "delete", "junk"]))
    if kind == "key":
        section, key = draw(section_and_key)
        value = draw(value_for(section, key))
        return (section, key, value) if section else (key, None, value)
    if kind == "section":  # a whole section of another shape: `data: cifar10`, a list, a number
        section = draw(st.sampled_from(sorted(SECTION_KEYS)))
        names = PLUGIN_VOCAB[section][0] + NAME_SPELLINGS if section in PLUGIN_VOCAB else SPECIAL_STRINGS
        return section, None, draw(st.one_of(st.sampled_from(names), values))
    if kind == "attacks":
        return SUITE_SECTION, None, draw(suite)
    if kind == "loggers":
        return LOGGER_SECTION, None, draw(logger_list)
    if kind == "delete":
        return draw(st.sampled_from(TOP_LEVEL_KEYS)), None, DELETE
    return draw(st.one_of(text, st.sampled_from(["Train", "defence", "attack", "epochs"]))), None, draw(values)


DELETE = object()


def apply_edits(base: dict[str, Any], changes: list[tuple[str, str | None, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for top, key, value in changes:
        if value is DELETE:
            out.pop(top, None)
        elif key is None:
            out[top] = value
        else:
            section = out.get(top)
            out[top] = {**(section if isinstance(section, dict) else {}), key: value}
    return out


#: a valid starting point: the default preset (digits, smallcnn, pgd-at, its suite), plus
#: a few attacks and a threat; edits then break it in zero to four places
BASE = {
    "seed": 0, "data": {"name": "digits"}, "arch": {"name": "smallcnn"}, "defense": {"name": "pgd-at"},
    "attacks": ["fgsm", "pgd-20"], "threat": {"norm": "Linf", "eps": "3/16"}, "train": {"epochs": 2},
}
raw_configs = st.builds(apply_edits, st.just(BASE), st.lists(edits(), max_size=4))
#: what the CLI flags build: a few sections, mostly of the right types
flag_layers = st.builds(apply_edits, st.just({}), st.lists(edits(), max_size=2))


def _flow(value: Any) -> str:
    """``value`` as YAML in flow style, as a user would type it after ``key=``."""
    try:
        dumped = yaml.safe_dump(value, default_flow_style=True, width=10**9, allow_unicode=True)
    except yaml.YAMLError:
        return str(value)
    return dumped.removesuffix("\n").removesuffix("\n...").strip()


@st.composite
def set_items(draw: st.DrawFn) -> str:
    """One ``--set`` argument: mostly a known key with a typed value, sometimes malformed."""
    kind = draw(st.sampled_from(["typed", "typed", "typed", "raw", "unknown", "malformed", "text"]))
    if kind in ("typed", "raw"):
        section, key = draw(section_and_key)
        dotted = f"{section}.{key}" if section else key
        if kind == "raw":
            return f"{dotted}={draw(strings)}"
        return f"{dotted}={_flow(draw(value_for(section, key)))}"
    if kind == "unknown":
        section = draw(st.sampled_from([*SECTION_KEYS, "nope", "seed", "Train", SUITE_SECTION]))
        return f"{section}.{draw(any_key)}={_flow(draw(values))}"
    if kind == "malformed":
        return draw(st.sampled_from(MALFORMED_SETS))
    return draw(st.text(max_size=20))


MALFORMED_SETS = ["noequals", "=5", ".x=1", "a.b.c=1", "train..lr=1", "train.=1", " =1", "", "=", "train.lr",
                  "train=5", ".=.", "seed=1=2", "a.b.c.d=[1", "train.lr==1", "attacks.x=1", "seed.x=1"]

BROKEN_YAML = [
    "train:\n  epochs: [1,\n", "a: b: c", "train:\n\tlr: 1\n", "{", "}", "- a\nb: c", "key: 'unclosed",
    "!!python/object/apply:os.system ['true']", "a: &x 1\nb: *y", "? [a, b]\n: c", "seed: 1\nseed: 2\n",
    "---\nseed: 1\n---\nseed: 2\n", "%YAML 9.9\n---\na: 1", "train: !!float abc", "seed: 2001-13-45",
    "seed: " + "9" * 5000, "\ufeffseed: 1\n", "data: [digits]", "attacks: {}", "attacks: []", "threat: 8/255",
    "defense:\n  - name: trades\n", "train: null\neval: ~\n", "...", "# only a comment\n", "",
]


def _deep(depth: int, style: str) -> str:
    if style == "flow-list":
        return "train:\n  milestones: " + "[" * depth + "]" * depth + "\n"
    if style == "flow-map":
        return "{a: " * depth + "1" + "}" * depth
    # block mappings: indentation grows with depth, so keep these shallower
    return "".join(f"{'  ' * i}k{i}:\n" for i in range(min(depth, 300))) + "  " * min(depth, 300) + "x\n"


yaml_documents = st.one_of(
    st.builds(lambda raw: yaml.safe_dump(raw, allow_unicode=True), raw_configs),  # mappings, mostly
    st.builds(lambda raw: yaml.safe_dump(raw, allow_unicode=True), raw_configs),
    st.builds(lambda raw: yaml.safe_dump(raw, allow_unicode=True, default_flow_style=True), raw_configs),
    st.builds(lambda v: yaml.safe_dump(v, allow_unicode=True), values),  # scalars and lists at the top
    # depths past Python's recursion limit cost a second each: a few, among shallow ones
    st.builds(_deep, st.one_of(st.integers(1, 60), st.sampled_from([400, 3000])),
              st.sampled_from(["flow-list", "flow-map", "block"])),
    st.sampled_from(BROKEN_YAML),
    st.text(max_size=60),
    st.builds(lambda a, b: a + b, st.sampled_from(BROKEN_YAML), st.builds(yaml.safe_dump, raw_configs)),
)


# ------------------------------------------------------------------ properties
@FUZZ
@given(overrides=st.lists(set_items(), max_size=4), flags=st.one_of(st.none(), flag_layers))
def _fuzz_set_overrides(sandbox: Path, overrides: list[str], flags: dict[str, Any] | None) -> None:
    record("--set", outcome(lambda: plan_run(validate(resolve(None, flags, overrides)))))


@FUZZ
@given(document=yaml_documents,
       prefix=st.one_of(st.none(), st.none(), st.none(), st.sampled_from([b"\xff\xfe\x00", b"\x80seed: 1\n"])))
def _fuzz_yaml_files(sandbox: Path, document: str, prefix: bytes | None) -> None:
    path = sandbox / "config.yaml"
    if prefix is not None:  # now and then, not UTF-8 at all
        path.write_bytes(prefix + document.encode("utf-8", "surrogatepass"))
    else:
        path.write_text(document, encoding="utf-8", errors="surrogatepass")
    record("yaml", outcome(lambda: plan_run(validate(resolve(path)))))


@FUZZ
@given(raw=st.one_of(raw_configs, raw_configs, raw_configs, values))
def _fuzz_raw_configs(sandbox: Path, raw: Any) -> None:
    # validate() also reads configs stored in checkpoints (--resume), not only resolve()'s
    record("validate", outcome(lambda: plan_run(validate(raw))))


def _run_property(prop: str, fuzz: Callable[[Path], None], sandbox: Path) -> None:
    started = time.perf_counter()
    try:
        fuzz(sandbox)
    finally:
        ELAPSED[prop] = ELAPSED.get(prop, 0.0) + time.perf_counter() - started
    # the strategies must reach valid configs too, or the property proves little
    assert 0 < OUTCOMES[prop]["valid"] < TRIED[prop], OUTCOMES[prop]


def test_random_set_overrides_validate_or_fail_in_one_line(sandbox: Path) -> None:
    _run_property("--set", _fuzz_set_overrides, sandbox)


def test_random_yaml_files_validate_or_fail_in_one_line(sandbox: Path) -> None:
    _run_property("yaml", _fuzz_yaml_files, sandbox)


def test_random_raw_configs_validate_or_fail_in_one_line(sandbox: Path) -> None:
    _run_property("validate", _fuzz_raw_configs, sandbox)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["train.lr=1" + "0" * 400], "train.lr: expected a finite number"),
        (["train.lr='1e400'"], "train.lr: expected a finite number"),
        (["train.lr=1e-99999999"], "train.lr: '1e-99999999' is out of range"),
        (["defense.step_size=1e-99999999"], "defense.step_size: expected a number or null"),
        (["threat.norm=L2", "threat.eps=1e400"], "threat.eps: '1e400' is too large"),
        (["threat.eps=1e-99999999"], "threat.eps: '1e-99999999' is out of range"),
        (["eval.sweep_eps=['1.5e+99999']"], "eval.sweep_eps[0]: '1.5e+99999' is out of range"),
        (['threat.eps=" 2\\n"'], "got 2"),
        (["results_dir=\"a\\0b\""], "NUL"),
        (["runs_dir=\"a\\0b\""], "NUL"),
        (["seed=" + "[" * 3000 + "]" * 3000], "nested too deeply"),
        (["seed=2001-13-45"], "config.seed: expected an integer"),
        (["eval.n_eval=" + "9" * 5000], "eval.n_eval: expected an integer"),
    ],
)
def test_inputs_that_used_to_crash(sandbox: Path, overrides: list[str], needle: str) -> None:
    """The crashes the fuzzing found (OverflowError, ValueError, RecursionError, minutes
    of Fraction arithmetic), kept as fast explicit regressions."""
    started = time.perf_counter()
    with pytest.raises(UserError) as caught:
        plan_run(validate(resolve(None, None, overrides)))
    message = str(caught.value)
    assert needle in message and message.splitlines() == [message] and len(message) < 400, message
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize(
    "raw",
    [[1], "x", {"data": 5}, {"data": "digits", "arch": ["smallcnn"]}, {"attacks": 5}, {"attacks": "pgd-20"}],
)
def test_validate_refuses_non_mapping_sections(sandbox: Path, raw: Any) -> None:
    with pytest.raises(UserError):
        validate(raw)


def test_deeply_nested_yaml_file_is_one_line(sandbox: Path) -> None:
    path = sandbox / "deep.yaml"
    path.write_text(_deep(3000, "flow-list"))
    with pytest.raises(UserError, match="nested too deeply"):
        resolve(path)


# ------------------------------------------------------------- the real CLI
def _cifar_garbage(root: Path) -> Path:
    """Every file CIFAR-10 needs, each holding garbage."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"not a pickle\n")
    return root


@pytest.fixture(scope="module")
def cli_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[list[str], str]]:
    """id -> (arguments of `robench run`, text the one stderr line must contain)."""
    tmp = tmp_path_factory.mktemp("cli-bad-input")
    blocker = tmp / "file"
    blocker.write_text("a regular file, not a folder\n")
    missing = tmp / "no-such-folder"
    empty = tmp / "empty"
    empty.mkdir()
    garbage = _cifar_garbage(tmp / "garbage")
    results = str(tmp / "results")
    cases: dict[str, tuple[list[str], str]] = {
        "eps-too-large": (["--eps", "2"], "eps must lie in [0, 1]"),
        "eps-negative": (["--eps", "-1/255"], "eps must lie in [0, 1]"),
        "eps-zero": (["--eps", "0"], "eps must be > 0"),
        "eps-not-a-number": (["--eps", "abc"], "expected a number or a fraction like 8/255, got 'abc'"),
        "steps-zero": (["--set", "defense.steps=0"], "defense.steps: must be >= 1, got 0"),
        "lr-negative": (["--set", "train.lr=-0.1"], "train.lr: must be > 0, got -0.1"),
        "batch-size-zero": (["--set", "train.batch_size=0"], "train.batch_size: must be >= 1, got 0"),
        "unknown-defense": (["--defense", "nope"], "unknown defense 'nope'"),
        "unknown-arch": (["--arch", "nope"], "unknown architecture 'nope'"),
        "unknown-data": (["--data", "nope"], "unknown dataset 'nope'"),
        "unknown-attack": (["--attack", "nope"], "unknown attack 'nope'"),
        "data-root-missing": (["--data", "cifar10", "--data-root", str(missing)],
                              f"no CIFAR-10 data in {missing / 'cifar-10-batches-py'} (folder missing)"),
        "data-root-empty": (["--data", "cifar10", "--data-root", str(empty)],
                            f"no CIFAR-10 data in {empty / 'cifar-10-batches-py'} (folder missing)"),
        "data-root-garbage": (["--data", "cifar10", "--data-root", str(garbage)], "checksum mismatch for"),
        "data-root-garbage-unchecked": (
            ["--data", "cifar10", "--data-root", str(garbage), "--set", "data.verify_checksums=false"],
            f"cannot read CIFAR-10 data in {garbage / 'cifar-10-batches-py'}",
        ),
        "results-dir-in-a-file": (["--results-dir", str(blocker / "sub")],
                                  f"folder {blocker / 'sub'} is not writable: {os.strerror(errno.ENOTDIR)}"),
        "runs-dir-in-a-file": (["--runs-dir", str(blocker / "sub")],
                               f"folder {blocker / 'sub'} is not writable: {os.strerror(errno.ENOTDIR)}"),
        "results-dir-in-proc": (["--results-dir", "/proc/robench-no-such-entry/results"], "is not writable"),
        "unsupported-device": (["--device", "meta"], "device: 'meta' is not supported"),
        "val-split-too-large": (["--set", "data.test_fraction=0.9"], "data.val_size: 180 must be between"),
        "nproc-over-global-batch": (["--nproc", "2", "--set", "train.batch_size=1"], "global batch"),
    }
    for case, (args, _) in cases.items():
        if case != "val-split-too-large":  # that one also checks that no progress display shows first
            args.append("-q")
        if "--results-dir" not in args:
            args += ["--results-dir", results]
    if not Path("/proc/self").is_dir():  # not Linux
        del cases["results-dir-in-proc"]
    return cases


CLI_IDS = [
    "eps-too-large", "eps-negative", "eps-zero", "eps-not-a-number", "steps-zero", "lr-negative",
    "batch-size-zero", "unknown-defense", "unknown-arch", "unknown-data", "unknown-attack", "data-root-missing",
    "data-root-empty", "data-root-garbage", "data-root-garbage-unchecked",
    "results-dir-in-a-file", "runs-dir-in-a-file", "results-dir-in-proc", "unsupported-device",
    "val-split-too-large", "nproc-over-global-batch",
]


@pytest.fixture(scope="module")
def cli_results(cli_cases: dict[str, tuple[list[str], str]]) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every case's `robench run` (all of them, even for one selected test); each fails
    within a second of its start, which conftest.run_cli's forked processes skip (the
    fresh-interpreter errors are in tests/cli/test_cli.py)."""
    return {case: run_cli("run", *args, timeout=300) for case, (args, _) in cli_cases.items()}


def assert_one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> str:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.removesuffix("\n").split("\n")
    assert len(lines) == 1 and lines[0].strip(), proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize("case", CLI_IDS)
def test_cli_bad_input_is_one_line_and_exit_2(
    case: str, cli_cases: dict[str, tuple[list[str], str]], cli_results: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    if case not in cli_cases:
        pytest.skip("no /proc here")
    assert_one_line_error(cli_results[case], cli_cases[case][1])


# ------------------------------------------------------ a full output folder
#: a short real digits run: one epoch of standard training on 179 images (the 180 of
#: the validation split held out), so the first checkpoint comes within seconds
SHORT_RUN = ["run", "--epochs", "1", "--defense", "standard", "--attack", "fgsm", "--set", "eval.checks=false",
             "--set", "data.test_fraction=0.8", "-q"]


def _env(**extra: str) -> dict[str, str]:
    """The environment conftest's run_cli gives robench, plus ``extra``."""
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1", **extra}
    env.pop("ROBENCH_DEBUG", None)
    return env


def _run(command: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Like conftest's run_cli, for a command around robench or with a resource limit."""
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=str(REPO), **kwargs)


def _assert_nothing_torn(runs: Path) -> None:
    """No temp file is left, and every checkpoint there is whole (it loads)."""
    import torch

    assert not [p for p in runs.rglob("*") if p.name.endswith(".tmp")], sorted(runs.rglob("*"))
    for pt in runs.rglob("*.pt"):
        torch.load(pt, map_location="cpu", weights_only=True)


def _tmpfs_allowed(mount_point: Path) -> bool:
    """Whether this process may mount a tmpfs in a private mount namespace (root, unshare)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def test_full_output_folder_fails_in_one_line_without_torn_files(tmp_path: Path) -> None:
    """No space left: a 64 KiB tmpfs, mounted in a private mount namespace (it vanishes
    with the process), holds the runs folder, so the first checkpoint cannot be written."""
    runs = tmp_path / "full"
    runs.mkdir()
    if not _tmpfs_allowed(runs):
        pytest.skip("cannot mount a tmpfs here (needs root and unshare); the file size limit test covers this")
    results, left = tmp_path / "results", tmp_path / "left-over.txt"
    # the listing of temp files is taken inside the namespace, before the tmpfs goes away
    inner = ('mount -t tmpfs -o size=64k tmpfs "$RUNS" && "$@"; code=$?; '
             'find "$RUNS" -name "*.tmp" > "$LEFT"; exit $code')
    proc = _run(["unshare", "-m", "sh", "-c", inner, "sh", sys.executable, "-m", "robench", *SHORT_RUN,
                 "--results-dir", str(results)],
                _env(ROBENCH_RUNS=str(runs), RUNS=str(runs), LEFT=str(left)))
    line = assert_one_line_error(proc, os.strerror(errno.ENOSPC))
    written = rf"writing {re.escape(str(runs))}/\S+\.pt failed: {os.strerror(errno.ENOSPC)} \(ENOSPC"
    assert re.search(written, line), line
    assert left.read_text() == "", left.read_text()
    assert not (results / "records").exists()


def test_file_size_limit_fails_in_one_line_without_torn_files(tmp_path: Path) -> None:
    """A file size limit (RLIMIT_FSIZE) below a checkpoint's size: with SIGXFSZ ignored,
    the write fails with EFBIG instead of killing the process."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    runs, results = tmp_path / "runs", tmp_path / "results"
    proc = _run([sys.executable, "-m", "robench", *SHORT_RUN, "--results-dir", str(results)],
                _env(ROBENCH_RUNS=str(runs)), preexec_fn=limit)
    line = assert_one_line_error(proc, os.strerror(errno.EFBIG))
    written = rf"writing {re.escape(str(runs))}/\S+\.pt failed: {os.strerror(errno.EFBIG)} \(EFBIG"
    assert re.search(written, line), line
    _assert_nothing_torn(runs)
    assert not (results / "records").exists()


@pytest.mark.parametrize("overwrite", [True, False])
@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), KeyboardInterrupt()])
def test_failed_atomic_write_keeps_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overwrite: bool, failure: BaseException
) -> None:
    target = tmp_path / "record.json"
    if overwrite:
        target.write_text("old\n")

    def fsync(fd: int) -> None:  # the data is written, not yet on disk
        raise failure

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(WriteError if isinstance(failure, OSError) else KeyboardInterrupt) as caught:
        atomic_write_bytes(target, b"new\n", overwrite=overwrite)
    if isinstance(failure, OSError):
        assert str(caught.value) == (f"writing {target} failed: {os.strerror(errno.ENOSPC)} "
                                     "(ENOSPC; free some space or choose another folder)")
    assert sorted(p.name for p in tmp_path.iterdir()) == (["record.json"] if overwrite else [])
    if overwrite:
        assert target.read_text() == "old\n"
