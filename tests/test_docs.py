"""The README's promises stay true: its commands run, its table and its figures are real.

* The two set-up commands of the first screen stay as written (CI runs the second).
* Every other command in a ``bash`` block runs, as a user would run it: from a fresh
  folder, results under ``./robench-results``. The long ones run with smaller settings
  named in :data:`SMALLER`, which may only add flags to the README's command. They share
  one folder, so ``eval``, ``leaderboard``, ``compare`` and ``plot`` read the runs made
  before them instead of training their own.
* The default run's table in the README has the rows and columns ``robench run`` prints.
* The plugin in the README trains under ``robench run``.
* Every "mean ± std" figure of the results paragraphs is on the board it links.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from dataset_files import write_idx

README = (REPO / "README.md").read_text()

#: README command -> the command the test runs: the same with smaller settings, added as flags
SMALLER = {
    "robench run --defense trades --seed 1": "robench run --defense trades --seed 1 --epochs 1 --n-eval 40",
    "robench run --data fashion-mnist --arch trades-smallcnn --defense mart --set defense.beta=1":
        "robench run --data fashion-mnist --arch trades-smallcnn --defense mart --set defense.beta=1"
        " --epochs 1 --n-eval 20 --attack fgsm --set data.val_size=20 --set data.verify_checksums=false",
    "robench eval --checkpoint robench-results/runs/<run id>/best.pt":
        "robench eval --checkpoint robench-results/runs/<run id>/best.pt --attack fgsm --n-eval 40",
    "robench sweep --defense pgd-at --defense trades --seeds 0,1 --jobs 2":
        "robench sweep --defense pgd-at --defense trades --seeds 0,1 --jobs 2 --epochs 1 --set eval.n_eval=40",
    # the committed records of this tuning, copied: it chooses again and finds every run recorded
    "robench tune configs/tuning/digits.yaml --jobs 2":
        "robench tune configs/tuning/digits.yaml --jobs 2 --results-dir leaderboards",
}
#: the README's first command, smaller: the run the other commands read (and its table)
FIRST_RUN = "robench run --epochs 1 --n-eval 40"
#: subcommands that train or evaluate: each needs an entry in SMALLER
LONG = {"run", "sweep", "tune", "eval", "ablate", "bench"}
#: flags a smaller version may repeat, adding to the README's rather than replacing them
REPEATABLE = {"--set"}


def _fenced(text: str, kind: str) -> list[str]:
    """The contents of the fenced blocks of one kind (``bash``, ``python``, ``""`` for plain)."""
    return [body for info, body in re.findall(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M) if info == kind]


def _bash_lines(text: str) -> list[list[str]]:
    """The commands of each ``bash`` block, comments and blank lines dropped."""
    return [[re.sub(r"\s+#.*$", "", line) for line in block.splitlines() if line.strip() and not line.startswith("#")]
            for block in _fenced(text, "bash")]


FIRST, *OTHERS = _bash_lines(README)
COMMANDS = [line for block in OTHERS for line in block]


def _robench(command: str, cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``robench ARGS`` as a user types it in ``cwd``: no results folder named, so
    everything goes to ``cwd/robench-results``. robench's cache is in ``cwd`` too: the
    stand-in Fashion-MNIST files are decompressed there, and must not end up in the
    cache of whoever runs the tests."""
    args = shlex.split(command)
    assert args[0] == "robench", command
    unset: dict[str, str | None] = {"ROBENCH_RESULTS": None, "ROBENCH_RUNS": None}
    env = {**unset, "ROBENCH_DATA": str(cwd / "data"), "XDG_CACHE_HOME": str(cwd / ".cache"), **(extra_env or {})}
    return run_cli(*args[1:], env=env, cwd=cwd)


# ------------------------------------------------------------------ the first screen
def test_readme_first_screen_has_the_two_commands() -> None:
    install_run, install_test = FIRST
    assert install_run.endswith("robench run") and "pip install -e ." in install_run
    assert install_test in (REPO / ".ci" / "run").read_text()  # CI runs exactly that
    assert FIRST_RUN.startswith("robench run ")


# ------------------------------------------------------------- the smaller versions
def test_every_readme_command_is_run_and_the_long_ones_only_smaller() -> None:
    assert len(COMMANDS) >= 10, COMMANDS
    stale = set(SMALLER) - set(COMMANDS)
    assert not stale, f"SMALLER names commands the README no longer shows: {stale}"
    long = [c for c in COMMANDS if shlex.split(c)[1] in LONG and c not in SMALLER]
    assert not long, f"README commands that train need a smaller version in SMALLER: {long}"


@pytest.mark.parametrize("command", sorted(SMALLER))
def test_a_smaller_version_only_adds_flags(command: str) -> None:
    shown, run = shlex.split(command), shlex.split(SMALLER[command])
    assert run[:len(shown)] == shown, "the README's command must be kept as it is"
    added = run[len(shown):]
    assert added and added[0].startswith("--"), added
    values_follow_flags = all(token.startswith("-") or added[i - 1].startswith("-") for i, token in enumerate(added))
    assert values_follow_flags, added
    overridden = {t for t in added if t.startswith("-")} & {t for t in shown if t.startswith("-")}
    assert overridden <= REPEATABLE, f"{overridden} would replace the README's own setting"


# ------------------------------------------------- every command, in a user's folder
@pytest.fixture(scope="module")
def readme_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, subprocess.CompletedProcess[str]]]:
    """A user's folder with this repository's configs/ and leaderboards/ (copies) and a
    Fashion-MNIST in the real file format: the README's first run, then every command,
    those that train first (the others read what they recorded)."""
    work = tmp_path_factory.mktemp("readme")
    for folder in ("configs", "leaderboards"):
        shutil.copytree(REPO / folder, work / folder)
    write_idx(work / "data", n_train=80, n_test=40)
    done = {FIRST_RUN: _robench(FIRST_RUN, work)}
    assert done[FIRST_RUN].returncode == 0, done[FIRST_RUN].stderr
    run_id = next((work / "robench-results" / "runs").iterdir()).name
    ordered = sorted(COMMANDS, key=lambda c: shlex.split(c)[1] not in ("run", "sweep"))
    for command in ordered:
        done[command] = _robench(SMALLER.get(command, command).replace("<run id>", run_id), work)
    return work, done


def _records(work: Path, dataset: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in (work / "robench-results" / "records" / dataset).rglob("*.json")]


#: what each command must have done, beyond exiting with 0
def _expect(command: str, work: Path, out: str) -> None:
    name = shlex.split(command)[1]
    results = work / "robench-results"
    if command.startswith("robench run --data fashion-mnist"):
        assert [r["defense"]["name"] for r in _records(work, "fashion-mnist")] == ["mart"]
    elif name == "eval":
        assert len(list((results / "evaluations" / "digits").rglob("*.json"))) == 1
    elif name == "leaderboard" and "-o" in command:
        assert (work / shlex.split(command)[-1]).stat().st_size > 10_000
    elif name == "leaderboard":
        assert "pgd-at" in out and "trades" in out
    elif name == "sweep":
        seeds = {(r["defense"]["name"], r["seed"]) for r in _records(work, "digits")}
        assert {(d, s) for d in ("pgd-at", "trades") for s in (0, 1)} <= seeds
    elif name == "compare":
        assert "over 2 seeds" in out, out
    elif name == "tune":
        assert "nothing to run" in out, out
    elif name == "plot":
        assert len(list((results / "plots").glob("*.png"))) == 1
    elif name == "new":
        assert (work / "robench-my-at" / "pyproject.toml").is_file()
    elif name == "list":
        assert "--set defense.KEY=VALUE" in out
    elif name == "data":
        assert "<- used" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs(command: str, readme_folder: tuple[Path, dict]) -> None:
    work, done = readme_folder
    proc = done[command]
    assert proc.returncode == 0, f"{SMALLER.get(command, command)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    _expect(command, work, proc.stdout)


# ------------------------------------------------------------ the default run's table
def _rows(table: str) -> list[list[str]]:
    """The cells of each row of a table drawn by rich, header first; the epoch of the
    reported checkpoint, which differs between a long and a short run, as N."""
    return [[re.sub(r"epoch \d+", "epoch N", cell.strip()) for cell in re.split(r"[│┃]", line)[1:-1]]
            for line in table.splitlines() if line[:1] in ("│", "┃")]


def test_the_readme_table_is_what_robench_run_prints(readme_folder: tuple[Path, dict]) -> None:
    """Labels and layout, not the accuracies: those of a one-epoch run differ, and the
    README's own vary with the kind of CPU."""
    shown = _rows(next(b for b in _fenced(README, "") if "accuracy (%)" in b))
    printed = _rows(readme_folder[1][FIRST_RUN].stdout)
    assert shown[0] == printed[0] == ["digits, Linf eps=3/16, best checkpoint (epoch N)", "accuracy (%)"]
    assert [row[0] for row in shown] == [row[0] for row in printed]
    values = [float(row[1]) for row in shown[1:]]
    assert all(0 <= v <= 100 for v in values) and values == sorted(values, reverse=True)
    assert values[-1] == values[-2], "the worst case is the last attack's accuracy"


# --------------------------------------------------------------- the plugin in five lines
def test_the_readme_plugin_trains(tmp_path: Path) -> None:
    """The README's Python block as a module, its entry point as installed metadata."""
    (code,) = _fenced(README, "python")
    (toml,) = _fenced(README, "toml")
    group = re.search(r'\[project\.entry-points\."([\w.]+)"\]', toml).group(1)
    name, target = re.search(r'^([\w-]+) = "([\w.:]+)"', toml, re.M).groups()
    package, module = target.split(":")[0].split(".")
    site = tmp_path / "site"
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text("")
    (site / package / f"{module}.py").write_text(code)
    dist = site / f"{package}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{name} = {target}\n")
    shown = f"robench run --defense {name}"
    assert f"`{shown}`" in README
    proc = _robench(f"{shown} --epochs 1 --n-eval 40 --attack fgsm --set eval.checks=false", tmp_path,
                    {"PYTHONPATH": os.pathsep.join(filter(None, (str(site), os.environ.get("PYTHONPATH"))))})
    assert proc.returncode == 0, proc.stderr
    (record,) = _records(tmp_path, "digits")
    assert record["defense"]["name"] == name and 0 <= record["accuracy"]["worst case"] <= record["accuracy"]["clean"]


# ------------------------------------------------------------------ the current results
BOARDS = ["leaderboards/digits-linf-3_16.md", "leaderboards/fashion-mnist-linf-0.1.md"]
FIGURE = re.compile(r"\d+\.\d\d ± \d+\.\d\d")


def test_readme_figures_come_from_the_committed_boards() -> None:
    """The boards are rebuilt from the committed records byte for byte (tests/test_golden.py)."""
    checked = 0
    for board in BOARDS:
        (paragraph,) = [p for p in README.split("\n\n") if f"]({board})" in p]
        figures = FIGURE.findall(paragraph)
        assert len(figures) >= 5, paragraph
        text = (REPO / board).read_text()
        assert not [f for f in figures if f not in text], f"not on {board}"
        checked += len(figures)
    assert checked == len(FIGURE.findall(README)), "a figure outside the results paragraphs is not checked"
