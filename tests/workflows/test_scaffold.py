"""``robench new``: scaffolded plugin packages install offline and run under robench.

Most packages are installed non-editable with ``pip --target`` into per-kind folders
that later subprocesses get on PYTHONPATH; entry points are found there just as in
site-packages. One test does exactly what a plugin author does, ``pip install -e``
into a (virtual) environment and ``robench run``, and one installs a plugin written
for another major plugin API. Everything goes through the real CLI,
``python -m robench``, and pip runs offline (``--no-index --no-build-isolation``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import robench
from robench.api.errors import UserError
from robench.workflows.scaffold import scaffold

REPO = Path(__file__).resolve().parents[2]

#: kind -> the plugin name each test package gets
NAMES = {"defense": "my-at", "attack": "my-atk", "architecture": "my-net", "dataset": "my-ds", "logger": "my-log"}

#: the flags that make a run take seconds: 1 epoch, one cheap attack, no extra checks
QUICK = ["--epochs", "1", "--attack", "fgsm", "--set", "eval.checks=false", "-q"]

PIP_OFFLINE = ["-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "-q"]


def _env(tmp: Path, sites: list[Path]) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ROBENCH_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, sites), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["ROBENCH_RUNS"] = str(tmp / "runs")
    env["COLUMNS"] = "200"
    return env


def _run(args: list[str], env: dict[str, str] | None = None, cwd: Path = REPO, timeout: int = 240):
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=str(cwd), timeout=timeout)


def _robench(*args: str, env: dict[str, str] | None = None, python: str = sys.executable):
    return _run([python, "-m", "robench", *args], env=env)


def _install(package: Path, site: Path) -> None:
    proc = _run([sys.executable, *PIP_OFFLINE, "--target", str(site), str(package)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "records").rglob("*.json"))]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    """Every kind scaffolded (the defense through the CLI) and installed: (tmp, packages, sites)."""
    tmp = tmp_path_factory.mktemp("scaffold")
    packages = {kind: tmp / f"robench-{name}" for kind, name in NAMES.items()}
    proc = _robench("new", "defense", NAMES["defense"], "--dir", str(packages["defense"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pip install -e" in proc.stdout and f"robench run --defense {NAMES['defense']}" in proc.stdout
    assert (packages["defense"] / "robench_my_at" / "defense.py").is_file()
    for kind in ("attack", "architecture", "dataset", "logger"):
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
    assert f'api_version = "{robench.api_version}"' in module
    for needed in ("attack_mode", "random_start", "pgd", "cross_entropy_loss", "default_step_size"):
        assert needed in module
    readme = (root / "README.md").read_text()
    for needed in ("pip install -e .", "robench run --defense my-at", "pytest", "twine upload",
                   "`--set defense.steps=5`"):
        assert needed in readme


@pytest.mark.parametrize("kind, group", [("attack", "robench.attacks"), ("architecture", "robench.architectures"),
                                         ("dataset", "robench.datasets"), ("logger", "robench.loggers")])
def test_scaffold_other_kinds(tmp_path: Path, kind: str, group: str) -> None:
    files = scaffold(kind, "x2-y", tmp_path / "pkg")
    assert len(files) == 5 and all(p.is_file() for p in files)
    pyproject = (tmp_path / "pkg" / "pyproject.toml").read_text()
    assert f'[project.entry-points."{group}"]\nx2-y = "robench_x2_y.{kind}:X2Y"' in pyproject
    for path in files:
        assert "{{" not in path.read_text(), path
        if path.suffix == ".py":
            compile(path.read_text(), str(path), "exec")
    if kind == "attack":  # the README's hint names the plugin
        assert "`--attack x2-y-20` sets 20 steps" in (tmp_path / "pkg" / "README.md").read_text()


def test_templates_are_package_data() -> None:
    """The templates ship in wheels: pyproject lists them, scaffold reads them as resources."""
    from importlib import resources

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    folder = resources.files("robench").joinpath("templates")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmpl"))
    kinds = ("architecture", "attack", "dataset", "defense", "logger")
    assert names == sorted(["README.md.tmpl", "__init__.py.tmpl", "pyproject.toml.tmpl",
                            *(f"{k}.py.tmpl" for k in kinds), *(f"test_{k}.py.tmpl" for k in kinds)])
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "robench.templates" in setuptools["packages"]
    assert setuptools["package-data"]["robench.templates"] == ["*.tmpl"]


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
        proc = _robench(*args)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.count("\n") == 1 and needle in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ installed, run
def test_all_five_new_plugins_run_together(installed) -> None:
    tmp, _, sites = installed
    proc = _robench("run", "--defense", "my-at", "--arch", "my-net", "--data", "my-ds", "--logger", "my-log",
                    "--attack", "my-atk-2", "--epochs", "1", "--set", "eval.checks=false", "--set", "defense.steps=2",
                    "--results-dir", str(tmp / "res-all"), "-q", env=_env(tmp, list(sites.values())))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning" not in proc.stderr, proc.stderr
    [record] = _records(tmp / "res-all")
    assert (record["dataset"], record["arch"]["name"], record["defense"]["name"]) == ("my-ds", "my-net", "my-at")
    rows = (tmp / "runs" / record["run_id"] / "my-log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,lr,loss") and rows[1].startswith("1,")


def _table(stdout: str) -> list[list[str]]:
    """The body rows of `robench list`'s table: [kind, name, distribution, object, status]."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in stdout.splitlines() if "│" in line]


def test_robench_list_shows_each_new_plugin(installed) -> None:
    """One `robench list` of every kind (`robench list architecture` alone would also
    count every built-in model's MACs, seconds each)."""
    tmp, _, sites = installed
    proc = _robench("list", env=_env(tmp, list(sites.values())))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {(row[0], row[1]): row for row in _table(proc.stdout)}
    for kind, name in NAMES.items():
        assert rows[kind, name][2] == f"robench-{name} 0.1.0" and rows[kind, name][4] == "ok", proc.stdout
    assert "broken" not in proc.stdout + proc.stderr


def test_generated_tests_pass(installed) -> None:
    tmp, packages, sites = installed
    tests = [str(next((packages[kind] / "tests").glob("test_*.py"))) for kind in NAMES]
    proc = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp), *tests],
                env=_env(tmp, list(sites.values())), cwd=tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and "failed" not in proc.stdout


# ------------------------------------------------------- pip install -e, as a user does
def _venv(path: Path) -> Path:
    """A virtual environment that sees this interpreter's packages; returns its python.

    ``--system-site-packages`` makes the base interpreter's site-packages a site
    directory of the venv, so its ``.pth`` files run there too: robench's own
    editable install (setuptools' ``__editable__.robench-*.pth`` and its import-hook
    finder), torch and pip are all importable without installing anything. A venv
    made from inside another venv gets the *base* interpreter's site-packages, not
    the outer venv's, so then a ``.pth`` adds the outer ones with ``site.addsitedir``
    (which processes their ``.pth`` files, unlike a plain path line). ``--without-pip``
    saves seconds: the base pip, run by the venv's python, installs into the venv.
    """
    import site

    proc = _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if sys.prefix != sys.base_prefix:  # running in a venv: bridge to its site-packages
        purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
        lines = [f"import site; site.addsitedir({d!r})" for d in site.getsitepackages()]
        Path(purelib.stdout.strip(), "_outer_site.pth").write_text("\n".join(lines) + "\n")
    return python


def test_pip_install_e_then_run_with_no_other_step(tmp_path: Path) -> None:
    """`robench new`, `pip install -e DIR` (offline), `robench run --defense NAME`: nothing else.

    The plugin is installed into a fresh venv, never into the environment running the
    tests. Its source is edited after the install (the default number of PGD steps, 10
    -> 1, which also makes the run fast): the record shows the edited default, so an
    editable install takes an edit without reinstalling.
    """
    python = str(_venv(tmp_path / "venv"))
    package = tmp_path / "robench-edit-at"
    env = _env(tmp_path, [])
    env.pop("PYTHONPATH")  # only what the venv itself sees
    proc = _robench("new", "defense", "edit-at", "--dir", str(package), env=env, python=python)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = _run([python, *PIP_OFFLINE, "-e", str(package)], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    source = package / "robench_edit_at" / "defense.py"
    text = source.read_text()
    assert text.count("steps: int = param(10, ") == 1
    source.write_text(text.replace("steps: int = param(10, ", "steps: int = param(1, "))

    results = tmp_path / "results"
    proc = _robench("run", "--defense", "edit-at", *QUICK, "--results-dir", str(results), env=env, python=python)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [record] = _records(results)
    assert record["defense"]["name"] == "edit-at"
    assert record["defense"]["params"]["steps"] == 1, record["defense"]
    # the plugin is in the venv only, not in the environment running these tests
    assert "edit-at" not in {ep.name for ep in metadata.entry_points(group="robench.defenses")}


# ------------------------------------------------- a plugin for another major API
@pytest.fixture(scope="module")
def incompatible(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A scaffolded defense that declares plugin API 2.0, installed: (tmp, env)."""
    tmp = tmp_path_factory.mktemp("api2")
    package = tmp / "robench-future-at"
    scaffold("defense", "future-at", package)
    module = package / "robench_future_at" / "defense.py"
    text = module.read_text()
    assert text.count(f'api_version = "{robench.api_version}"') == 1
    module.write_text(text.replace(f'api_version = "{robench.api_version}"', 'api_version = "2.0"'))
    _install(package, tmp / "site")
    return tmp, _env(tmp, [tmp / "site"])


def test_list_shows_a_plugin_for_another_api_as_broken(incompatible) -> None:
    tmp, env = incompatible
    proc = _robench("list", "defense", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {row[1]: row for row in _table(proc.stdout) if row[0] == "defense"}
    future = rows.pop("future-at")
    assert future[2] == "robench-future-at 0.1.0" and future[4] == "broken", proc.stdout
    assert "pgd-at" in rows and {row[4] for row in rows.values()} == {"ok"}, proc.stdout  # the others: usable
    [reason] = [line for line in proc.stdout.splitlines() if line.startswith("broken:")]
    assert reason == (f"broken: defense plugin 'future-at' from robench-future-at 0.1.0 targets plugin API 2.0; "
                      f"this robench provides {robench.api_version}")
    assert proc.stderr == "1 broken plugin(s); the others are usable.\n"


def test_run_refuses_a_plugin_for_another_api_in_one_line(incompatible) -> None:
    tmp, env = incompatible
    proc = _robench("run", "--defense", "future-at", *QUICK, "--results-dir", str(tmp / "res"), env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == (f"error: defense plugin 'future-at' from robench-future-at 0.1.0 targets plugin API "
                           f"2.0; this robench provides {robench.api_version}\n")
    assert not (tmp / "res").exists() and not list((tmp / "runs").glob("*"))
