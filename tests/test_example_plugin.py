"""The example plugin in examples/ keeps working as a third party would use it.

``robench-fast-at`` is copied out of the checkout (so that building it leaves nothing
in the repository), installed offline with ``pip --target`` into a folder that the
subprocesses get on PYTHONPATH, then: its own tests pass, ``robench list`` shows it,
and a real ``robench run --defense fast-at`` trains, evaluates and records.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "robench-fast-at"


def _env(tmp: Path, site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ROBENCH_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["ROBENCH_RUNS"] = str(tmp / "runs")
    env["COLUMNS"] = "200"
    return env


def _run(args: list[str], env: dict[str, str] | None = None, cwd: Path = REPO, timeout: int = 240):
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=str(cwd), timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(tmp, the copied package, the site folder it is installed in)."""
    tmp = tmp_path_factory.mktemp("example")
    package = tmp / EXAMPLE.name
    shutil.copytree(EXAMPLE, package, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    site = tmp / "site"
    proc = _run([sys.executable, "-m", "pip", "install", "--no-index", "--no-build-isolation", "--no-deps",
                 "--disable-pip-version-check", "-q", "--target", str(site), str(package)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp, package, site


def test_installs_only_its_own_package(installed) -> None:
    _, _, site = installed
    assert (site / "robench_fast_at" / "defense.py").is_file()
    assert sorted(p.name for p in site.iterdir() if not p.name.endswith(".dist-info")) == ["robench_fast_at"]


def test_is_not_part_of_robench_s_own_distribution() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert isinstance(setuptools["packages"], list), "robench lists its packages explicitly"
    assert not [p for p in setuptools["packages"] if "example" in p]
    entry_points = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    assert "fast-at" not in entry_points["robench.defenses"]


def test_its_own_tests_pass(installed) -> None:
    tmp, package, site = installed
    proc = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                env=_env(tmp, site), cwd=package)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and "failed" not in proc.stdout and "skipped" not in proc.stdout


def test_robench_list_shows_it(installed) -> None:
    tmp, _, site = installed
    proc = _run([sys.executable, "-m", "robench", "list", "defense"], env=_env(tmp, site))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if " fast-at " in line]
    assert len(rows) == 1, proc.stdout
    assert "robench-fast-at 0.1.0" in rows[0] and "robench_fast_at.defense:FastAt" in rows[0]
    assert re.search(r"\bok\b", rows[0]), rows[0]
    assert "broken" not in proc.stdout + proc.stderr


def test_robench_run_trains_evaluates_and_records(installed) -> None:
    tmp, _, site = installed
    results = tmp / "results"
    proc = _run([sys.executable, "-m", "robench", "run", "--defense", "fast-at", "--epochs", "2",
                 "--attack", "fgsm", "--attack", "pgd-10", "--set", "defense.alpha=1.0", "--set", "eval.checks=false",
                 "--results-dir", str(results), "--runs-dir", str(tmp / "runs"), "-q"], env=_env(tmp, site))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fast-at on digits" in proc.stdout
    (path,) = (results / "records").rglob("*.json")
    record = json.loads(path.read_text())
    assert record["defense"] == {"name": "fast-at", "params": {"alpha": 1.0, "random_start": True},
                                 "changed": {"alpha": 1.0}}
    assert record["config"]["defense"] == {"name": "fast-at", "alpha": 1.0, "random_start": True}
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    accuracy = record["accuracy"]
    assert list(accuracy) == ["clean", "FGSM", "PGD-10", "worst case"]
    assert all(isinstance(v, float) and math.isfinite(v) and 0 <= v <= 100 for v in accuracy.values())
    assert accuracy["worst case"] <= accuracy["PGD-10"] <= accuracy["FGSM"] <= accuracy["clean"]
    assert "fast-at" in (results / "digits-linf-3_16.md").read_text()


# ------------------------------------------------------------ the tutorial stays true
TUTORIAL = REPO / "docs" / "writing-plugins.md"


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text).replace(",)", ")")


def test_the_tutorial_shows_the_example_module_verbatim() -> None:
    module = (EXAMPLE / "robench_fast_at" / "defense.py").read_text()
    assert module in TUTORIAL.read_text()


def test_the_tutorial_copies_the_contracts_signatures_from_the_contracts_module() -> None:
    api = "".join(_squeeze((REPO / "robench" / "api" / name).read_text()) for name in ("contracts.py", "loggers.py"))
    contracts = TUTORIAL.read_text().split("## 2. The contracts")[1].split("## 3.")[0]
    signatures = re.findall(r"def \w+\(.*?\) -> [^:]+:", contracts, re.S)
    assert len(signatures) >= 10, signatures
    for signature in signatures:
        assert _squeeze(signature) in api, signature
