"""``robench new``: scaffolded plugin packages install offline and run under robench.

The packages are installed non-editable with ``pip --target`` into per-kind folders
that later subprocesses get on PYTHONPATH, as a user's ``pip install -e .`` would make
them visible through entry points.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from robench.errors import UserError
from robench.scaffold import scaffold

REPO = Path(__file__).resolve().parent.parent

#: kind -> the plugin name each test package gets
NAMES = {"defense": "my-at", "attack": "my-atk", "architecture": "my-net", "dataset": "my-ds"}

#: runs ``robench`` with ``new`` registered whether or not robench/cli.py registers it yet
NEW_SHIM = textwrap.dedent(
    """
    from robench import cli
    from robench.cli_new import new
    if not any(c.callback is new for c in cli.app.registered_commands):
        cli.app.command()(new)
    raise SystemExit(cli.main())
    """
)


def _env(tmp: Path, sites: list[Path]) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ROBENCH_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, sites), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["ROBENCH_RUNS"] = str(tmp / "runs")
    env["COLUMNS"] = "200"
    return env


def _run(args: list[str], env: dict[str, str] | None = None, cwd: Path = REPO, timeout: int = 240):
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=str(cwd), timeout=timeout)


def _install(package: Path, site: Path) -> None:
    proc = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                 "--disable-pip-version-check", "-q", "--target", str(site), str(package)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    """Every kind scaffolded (the defense through the CLI) and installed: (tmp, packages, sites)."""
    tmp = tmp_path_factory.mktemp("scaffold")
    packages = {kind: tmp / f"robench-{name}" for kind, name in NAMES.items()}
    proc = _run([sys.executable, "-c", NEW_SHIM, "new", "defense", NAMES["defense"], "--dir", str(packages["defense"])])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pip install -e" in proc.stdout and f"robench run --defense {NAMES['defense']}" in proc.stdout
    for kind in ("attack", "architecture", "dataset"):
        scaffold(kind, NAMES[kind], packages[kind])
    sites = {kind: tmp / f"site-{kind}" for kind in NAMES}
    for kind in NAMES:
        _install(packages[kind], sites[kind])
    return tmp, packages, sites


# ------------------------------------------------------------------------- the files
def test_scaffold_writes_an_installable_defense_package(tmp_path: Path) -> None:
    files = scaffold("defense", "my-at", tmp_path / "my-at")
    rel = sorted(p.relative_to(tmp_path / "my-at").as_posix() for p in files)
    assert rel == ["README.md", "pyproject.toml", "robench_my_at/__init__.py",
                   "robench_my_at/defense.py", "tests/test_robench_my_at.py"]
    root = tmp_path / "my-at"
    pyproject = (root / "pyproject.toml").read_text()
    assert 'build-backend = "setuptools.build_meta"' in pyproject
    assert 'name = "robench-my-at"' in pyproject and 'version = "0.1.0"' in pyproject
    assert '[project.entry-points."robench.defenses"]\nmy-at = "robench_my_at.defense:MyAt"' in pyproject
    module = (root / "robench_my_at" / "defense.py").read_text()
    assert "# --- your loss here ---" in module and "{{" not in module
    for needed in ("attack_mode", "random_start", "pgd", "cross_entropy_loss", "default_step_size"):
        assert needed in module
    readme = (root / "README.md").read_text()
    for needed in ("pip install -e .", "robench run --defense my-at", "pytest", "twine upload"):
        assert needed in readme


@pytest.mark.parametrize("kind, group", [("attack", "robench.attacks"), ("architecture", "robench.architectures"),
                                         ("dataset", "robench.datasets")])
def test_scaffold_other_kinds(tmp_path: Path, kind: str, group: str) -> None:
    files = scaffold(kind, "x2-y", tmp_path / "pkg")
    assert len(files) == 5 and all(p.is_file() for p in files)
    pyproject = (tmp_path / "pkg" / "pyproject.toml").read_text()
    assert f'[project.entry-points."{group}"]\nx2-y = "robench_x2_y.{kind}:X2Y"' in pyproject
    for path in files:
        assert "{{" not in path.read_text(), path
        if path.suffix == ".py":
            compile(path.read_text(), str(path), "exec")


# ------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("name", ["My-AT", "my_at", "-at", "at-", "a--b", "1at", "", "a b", "../x"])
def test_refuses_a_bad_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(UserError, match="invalid plugin name") as info:
        scaffold("defense", name, tmp_path / "pkg")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "pkg").exists()


def test_refuses_a_non_empty_directory_and_an_unknown_kind(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not an empty folder"):
        scaffold("defense", "my-at", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    with pytest.raises(UserError, match="unknown plugin kind"):
        scaffold("loss", "my-at", tmp_path / "new")
    scaffold("defense", "my-at", tmp_path / "empty-is-fine")  # an empty folder is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    assert scaffold("defense", "my-at", empty)


def test_cli_refusals_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    for args, needle in ((["new", "defense", "Bad_Name", "--dir", str(tmp_path / "a")], "invalid plugin name"),
                         (["new", "defense", "ok", "--dir", str(tmp_path / "full")], "not an empty folder")):
        proc = _run([sys.executable, "-c", NEW_SHIM, *args])
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.count("\n") == 1 and needle in proc.stderr and "Traceback" not in proc.stderr


def _new_registered() -> bool:
    from robench import cli
    from robench.cli_new import new

    return any(c.callback is new for c in cli.app.registered_commands)


@pytest.mark.skipif(not _new_registered(), reason="`new` is not registered in robench/cli.py yet")
def test_python_m_robench_new(tmp_path: Path) -> None:
    proc = _run([sys.executable, "-m", "robench", "new", "defense", "my-at", "--dir", str(tmp_path / "my-at")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "my-at" / "robench_my_at" / "defense.py").is_file()


# ------------------------------------------------------------------ installed, run
def test_defense_runs_under_robench(installed) -> None:
    tmp, _, sites = installed
    proc = _run([sys.executable, "-m", "robench", "run", "--defense", "my-at", "--epochs", "1", "--attack", "fgsm",
                 "--set", "eval.checks=false", "--results-dir", str(tmp / "res"), "-q"], env=_env(tmp, [sites["defense"]]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = list((tmp / "res" / "records").rglob("*my-at*.json"))
    assert records, proc.stdout


def test_all_four_new_plugins_run_together(installed) -> None:
    tmp, _, sites = installed
    proc = _run([sys.executable, "-m", "robench", "run", "--defense", "my-at", "--arch", "my-net", "--data", "my-ds",
                 "--attack", "my-atk-2", "--epochs", "1", "--set", "eval.checks=false", "--set", "defense.steps=2",
                 "--results-dir", str(tmp / "res-all"), "-q"], env=_env(tmp, list(sites.values())))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list((tmp / "res-all" / "records" / "my-ds").rglob("*.json")), proc.stdout


def test_robench_list_shows_each_new_plugin(installed) -> None:
    tmp, _, sites = installed
    for kind, name in NAMES.items():
        proc = _run([sys.executable, "-m", "robench", "list", kind], env=_env(tmp, [sites[kind]]))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        row = [line for line in proc.stdout.splitlines() if f" {name} " in line]
        assert row and "ok" in row[0] and f"robench-{name}" in row[0], proc.stdout
        assert "broken" not in proc.stdout + proc.stderr


def test_generated_tests_pass(installed) -> None:
    tmp, packages, sites = installed
    tests = [str(next((packages[kind] / "tests").glob("test_*.py"))) for kind in NAMES]
    proc = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp), *tests],
                env=_env(tmp, list(sites.values())), cwd=tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and "failed" not in proc.stdout
