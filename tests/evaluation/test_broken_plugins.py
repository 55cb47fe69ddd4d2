"""Broken third-party plugins, each broken in one way, from one really installed distribution.

``robench-broken-zoo 0.2`` is a real project (pyproject with entry points) installed
with pip into a temp folder that the CLI subprocesses get on PYTHONPATH, so robench
finds it through ordinary entry-point metadata. Its plugins fail in every way a
plugin can: at import, in the constructor, by returning the wrong type (a build
that is no nn.Module, splits that are no DataSplits, a loss that is no LossOutput),
an attack result of the wrong type or shape, adversaries outside the threat model, a
whole-set verdict that hides its adversaries, or an attack that raises. Each must stop the run with exit 2
and one line naming the plugin and its distribution, with no traceback, and
``robench list`` must go on listing everything else.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import run_cli
from test_third_party_plugins import BUILTINS, broken_lines, table_rows

DIST = "robench-broken-zoo 0.2"

PYPROJECT = """
    [build-system]
    requires = ["setuptools>=61"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "robench-broken-zoo"
    version = "0.2"
    description = "robench plugins that are broken on purpose"

    [tool.setuptools]
    packages = ["broken_zoo"]

    [project.entry-points."robench.defenses"]
    zoo-fine = "broken_zoo.plugins:Fine"
    zoo-ctor-raises = "broken_zoo.plugins:CtorRaises"
    zoo-tuple-loss = "broken_zoo.plugins:TupleLoss"
    zoo-needs-missing = "broken_zoo.needs_missing:Whatever"

    [project.entry-points."robench.architectures"]
    zoo-not-module = "broken_zoo.plugins:NotAModule"

    [project.entry-points."robench.datasets"]
    zoo-tuple-splits = "broken_zoo.plugins:TupleSplits"

    [project.entry-points."robench.attacks"]
    zoo-list-attack = "broken_zoo.plugins:ListAttack"
    zoo-cropped-attack = "broken_zoo.plugins:CroppedAttack"
    zoo-label-flags = "broken_zoo.plugins:LabelFlags"
    zoo-outside-ball = "broken_zoo.plugins:OutsideBall"
    zoo-outside-box = "broken_zoo.plugins:OutsideBox"
    zoo-hidden-whole-set = "broken_zoo.plugins:HiddenWholeSet"
    zoo-far-whole-set = "broken_zoo.plugins:FarWholeSet"
    zoo-crashing-attack = "broken_zoo.plugins:Crashing"
    zoo-claims-all = "broken_zoo.plugins:ClaimsAll"

    [project.entry-points."robench.loggers"]
    zoo-missing-tool = "broken_zoo.needs_missing:Whatever"
"""

PLUGINS = '''
    """Plugins that each break the contract of robench.api in one way."""
    import torch
    import torch.nn.functional as F

    from robench.api import Architecture, Attack, AttackOutcome, Dataset, Defense, LossOutput
    from robench.api.threat import ThreatModel


    class Fine(Defense):
        """Works: a broken sibling in the same distribution must not taint it."""

        def loss(self, model, x, y, threat):
            logits = model(x)
            return LossOutput(F.cross_entropy(logits, y), logits)


    class CtorRaises(Defense):
        def __init__(self, params=None):
            super().__init__(params)
            raise RuntimeError("zoo cannot reach its licence server")


    class TupleLoss(Defense):
        """Returns (loss, logits) instead of LossOutput."""

        def loss(self, model, x, y, threat):
            logits = model(x)
            return F.cross_entropy(logits, y), logits


    class NotAModule(Architecture):
        def build(self, num_classes, input_shape):
            return {"layers": [input_shape, num_classes]}


    class TupleSplits(Dataset):
        """Returns two (x, y) tuples instead of DataSplits."""

        num_classes = 10
        input_shape = (1, 8, 8)
        mean = (0.5,)
        std = (0.25,)
        threat_model = ThreatModel("Linf", "3/16")

        def load(self, root, seed):
            gen = torch.Generator().manual_seed(seed)
            x, y = torch.rand(40, 1, 8, 8, generator=gen), torch.randint(0, 10, (40,), generator=gen)
            return (x[:30], y[:30]), (x[30:], y[30:])


    class ListAttack(Attack):
        def perturb(self, model, x, y, threat, generator=None):
            return x.tolist()


    class CroppedAttack(Attack):
        """The wrong shape that a model with adaptive pooling would silently accept."""

        def perturb(self, model, x, y, threat, generator=None):
            return x[:, :, :4, :4].clone()


    class LabelFlags(Attack):
        """Overrides still_correct and returns predicted labels instead of flags."""

        def still_correct(self, model, x, y, threat, generator=None, state_path=None):
            with torch.no_grad():
                return model(x).argmax(1)


    class OutsideBall(Attack):
        """Steps twice the budget: a success no attack inside the threat model has."""

        def perturb(self, model, x, y, threat, generator=None):
            return (x + 2 * threat.value).clamp(0, 1)


    class OutsideBox(Attack):
        """Stays inside the ball but never clamps to [0, 1]."""

        def perturb(self, model, x, y, threat, generator=None):
            return x - threat.value


    class HiddenWholeSet(Attack):
        """Evaluates the whole set itself and reports every point broken, showing nothing."""

        whole_set = True

        def evaluate_points(self, model, x, y, threat, generator=None, state_path=None):
            return AttackOutcome(torch.zeros(len(y), dtype=torch.bool, device=y.device))


    class FarWholeSet(Attack):
        """Evaluates the whole set itself with adversaries far outside the ball."""

        whole_set = True

        def evaluate_points(self, model, x, y, threat, generator=None, state_path=None):
            broken = torch.zeros(len(y), dtype=torch.bool, device=y.device)
            return AttackOutcome(broken, adversaries=(x + 0.5).clamp(0, 1))


    class Crashing(Attack):
        def perturb(self, model, x, y, threat, generator=None):
            raise RuntimeError("zoo attack has no kernel for this device")


    class ClaimsAll(Attack):
        """Claims every point broken but hands back the inputs themselves: within the
        threat model, yet the model classifies them as before."""

        whole_set = True

        def evaluate_points(self, model, x, y, threat, generator=None, state_path=None):
            broken = torch.zeros(len(y), dtype=torch.bool, device=y.device)
            return AttackOutcome(broken, adversaries=x.clone())
'''


@pytest.fixture(scope="module")
def zoo_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder that pip installed robench-broken-zoo into (``pip install --target``)."""
    src = tmp_path_factory.mktemp("zoo-src")
    (src / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT).lstrip(), encoding="utf-8")
    package = src / "broken_zoo"
    package.mkdir()
    (package / "__init__.py").write_text('"""robench-broken-zoo."""\n', encoding="utf-8")
    (package / "plugins.py").write_text(textwrap.dedent(PLUGINS).lstrip(), encoding="utf-8")
    (package / "needs_missing.py").write_text("import robench_zoo_missing_dependency  # noqa: F401\n", encoding="utf-8")
    site = tmp_path_factory.mktemp("zoo-site")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(site), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (site / "robench_broken_zoo-0.2.dist-info" / "entry_points.txt").is_file(), sorted(os.listdir(site))
    return site


def zoo_cli(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI with robench-broken-zoo installed (on PYTHONPATH)."""
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    return run_cli(*args, env={"PYTHONPATH": path})


def one_error_line(proc: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Exit 2, one ``error:`` line on stderr that names the plugin's distribution, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for text in (DIST, *expected):
        assert text in line, (text, line)
    return line


@pytest.fixture(scope="module")
def trained(zoo_site: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint from a short real run, for evaluating it with the zoo's attacks."""
    root = tmp_path_factory.mktemp("zoo-run")
    proc = zoo_cli(
        zoo_site, "run", "--defense", "zoo-fine", "--epochs", "1", "--attack", "fgsm", "--n-eval", "20",
        "--set", "eval.checks=false", "--set", "train.batch_size=256",
        "--results-dir", str(root / "results"), "--runs-dir", str(root / "runs"), "-q",
    )
    assert proc.returncode == 0, proc.stderr  # zoo-fine works although its distribution is broken
    record = json.loads(next((root / "results" / "records").rglob("*.json")).read_text(encoding="utf-8"))
    assert record["defense"]["name"] == "zoo-fine"
    return root / "runs" / record["run_id"] / "last.pt"


# ------------------------------------------------------------------------------ discovery
def test_list_reports_the_import_failure_and_lists_everything_else(zoo_site: Path) -> None:
    proc = zoo_cli(zoo_site, "list")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    rows = table_rows(proc.stdout)
    zoo = {key for key, row in rows.items() if row["distribution"] == DIST}
    assert zoo == {
        ("defense", "zoo-fine"), ("defense", "zoo-ctor-raises"), ("defense", "zoo-tuple-loss"),
        ("defense", "zoo-needs-missing"), ("architecture", "zoo-not-module"), ("dataset", "zoo-tuple-splits"),
        ("attack", "zoo-list-attack"), ("attack", "zoo-cropped-attack"), ("attack", "zoo-label-flags"),
        ("attack", "zoo-outside-ball"), ("attack", "zoo-outside-box"), ("attack", "zoo-hidden-whole-set"),
        ("attack", "zoo-far-whole-set"), ("attack", "zoo-crashing-attack"), ("attack", "zoo-claims-all"),
        ("logger", "zoo-missing-tool"),
    }
    assert set(rows) == BUILTINS | zoo
    broken = [key for key, row in rows.items() if row["status"] != "ok"]
    # only import failures show in a listing
    assert broken == [("defense", "zoo-needs-missing"), ("logger", "zoo-missing-tool")]
    errors = broken_lines(proc.stdout)
    assert len(errors) == 2
    for name, error in zip(("'zoo-needs-missing'", "'zoo-missing-tool'"), errors, strict=True):
        for text in (name, DIST, "ModuleNotFoundError", "robench_zoo_missing_dependency"):
            assert text in error, (text, error)
    assert "2 broken plugin(s)" in proc.stderr


def test_run_with_a_plugin_that_fails_to_import(zoo_site: Path, results: Path) -> None:
    proc = zoo_cli(zoo_site, "run", "--defense", "zoo-needs-missing", "--epochs", "1",
                   "--results-dir", str(results), "-q")
    one_error_line(proc, "zoo-needs-missing", "robench_zoo_missing_dependency")
    assert not list(results.rglob("*.json"))


def test_a_logger_that_fails_to_import_is_left_out_and_the_run_goes_on(zoo_site: Path, results: Path) -> None:
    """Unlike a defense, a logger is not what the run computes: one warning, then the run."""
    proc = zoo_cli(zoo_site, "run", "--logger", "zoo-missing-tool", "--epochs", "1", "--attack", "fgsm",
                   "--n-eval", "20", "--set", "eval.checks=false", "--results-dir", str(results), "-q")
    assert proc.returncode == 0, proc.stderr
    (warning,) = [line for line in proc.stderr.splitlines() if line.strip()]
    assert warning.startswith("warning: logger plugin 'zoo-missing-tool' from robench-broken-zoo 0.2 failed to load")
    assert "robench_zoo_missing_dependency" in warning and warning.endswith("the run goes on without it")
    (record,) = results.rglob("records/**/*.json")
    assert json.loads(record.read_text())["config"]["loggers"] == [{"name": "jsonl", "file": "log.jsonl"}]


# ---------------------------------------------------------------- fails before any work
def test_defense_whose_constructor_raises(zoo_site: Path, results: Path) -> None:
    proc = zoo_cli(zoo_site, "run", "--defense", "zoo-ctor-raises", "--epochs", "1",
                   "--results-dir", str(results), "-q")
    one_error_line(proc, "zoo-ctor-raises", "constructor", "RuntimeError", "licence server")
    assert not list(results.rglob("*.json"))


def test_architecture_that_builds_no_module(zoo_site: Path, results: Path) -> None:
    proc = zoo_cli(zoo_site, "run", "--arch", "zoo-not-module", "--defense", "zoo-fine", "--epochs", "1",
                   "--results-dir", str(results), "-q")
    one_error_line(proc, "zoo-not-module", "dict", "nn.Module")


def test_dataset_whose_load_returns_the_wrong_type(zoo_site: Path, results: Path) -> None:
    proc = zoo_cli(zoo_site, "run", "--data", "zoo-tuple-splits", "--defense", "zoo-fine", "--epochs", "1",
                   "--results-dir", str(results), "-q")
    one_error_line(proc, "zoo-tuple-splits", "tuple", "DataSplits")


def test_defense_whose_loss_returns_the_wrong_type(zoo_site: Path, results: Path) -> None:
    proc = zoo_cli(zoo_site, "run", "--defense", "zoo-tuple-loss", "--epochs", "1",
                   "--results-dir", str(results), "-q")
    one_error_line(proc, "zoo-tuple-loss", "LossOutput")
    assert not list(results.rglob("*.json"))


# ------------------------------------------------------------------ attacks, in evaluation
@pytest.mark.parametrize(
    ("attack", "expected"),
    [
        ("zoo-list-attack", ("perturb()", "list, not a tensor")),
        ("zoo-cropped-attack", ("perturb()", "x1x4x4;", "x1x8x8, float")),
        ("zoo-label-flags", ("still_correct()", "torch.int64", "one boolean flag per input")),
        ("zoo-outside-ball", ("perturb()", "adversaries outside the threat model", "leave the Linf ball of eps 3/16")),
        ("zoo-outside-box", ("perturb()", "leave the [0, 1] box", "from -0.1875")),
        ("zoo-hidden-whole-set", ("evaluate_points()", "no adversaries", "AttackOutcome(still_correct, flags, adversaries)")),
        ("zoo-far-whole-set", ("evaluate_points()", "leave the Linf ball of eps 3/16", "largest distance 0.5")),
        ("zoo-crashing-attack", ("perturb() failed on a probe of 4 points", "RuntimeError", "no kernel")),
    ],
)
def test_attack_that_returns_the_wrong_thing(
    zoo_site: Path, trained: Path, tmp_path: Path, attack: str, expected: tuple[str, ...]
) -> None:
    out = tmp_path / "report.json"
    proc = zoo_cli(zoo_site, "eval", "--checkpoint", str(trained), "--attack", attack,
                   "--set", "eval.checks=false", "--out", str(out), "-q")
    one_error_line(proc, f"attack plugin '{attack}'", *expected)
    assert not out.exists()


def test_a_claimed_success_counts_only_where_the_model_is_fooled(zoo_site: Path, trained: Path, tmp_path: Path) -> None:
    """An attack that reports every point broken, with adversaries the model still
    classifies correctly, breaks nothing: robench's verdict on the adversaries counts."""
    out = tmp_path / "report.json"
    proc = zoo_cli(zoo_site, "eval", "--checkpoint", str(trained), "--attack", "zoo-claims-all",
                   "--set", "eval.checks=false", "--out", str(out), "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    accuracy = json.loads(out.read_text(encoding="utf-8"))["accuracy"]
    assert accuracy["clean"] > 0 and accuracy["ClaimsAll"] == accuracy["clean"] == accuracy["worst case"]


def test_a_broken_attack_fails_before_training(zoo_site: Path, tmp_path: Path) -> None:
    """The suite is probed when the run starts: no epoch is trained, nothing is recorded."""
    results, runs = tmp_path / "results", tmp_path / "runs"
    proc = zoo_cli(zoo_site, "run", "--defense", "zoo-fine", "--epochs", "3", "--attack", "fgsm",
                   "--attack", "zoo-outside-box", "--results-dir", str(results), "--runs-dir", str(runs), "-q")
    one_error_line(proc, "attack plugin 'zoo-outside-box'", "perturb()", "leave the [0, 1] box")
    assert not list(runs.rglob("*.pt")) and not list(runs.rglob("log.jsonl"))
    assert not list(results.rglob("*.json"))
