"""The GPU check's trip, rehearsed on this machine, and the schema of every committed
gpu-check.json.

The GPU machine has no network, a bare disk, Python with a fixed list of packages
(REFERENCE: torch, torchvision, timm, numpy, scipy, pandas, tabulate, matplotlib, rich,
typer, pyyaml, scikit-learn, safetensors, pytest, pytest-xdist, hypothesis, tensorboard
and what they need; not robench, not pyautoattack) and the working tree without
``.git``. The rehearsal builds those conditions here: a copy of the tree, a venv without
this machine's site-packages that sees only links to those packages, the network cut
(``unshare -rmn``), pip pointed at no index, an empty ``HOME`` and a tmpfs over
``/usr/share/datasets``; then ``prepare.sh --smoke`` (here, outside) and ``device.sh
--smoke`` with every part (there, inside). What it cannot rehearse: the GPU machine's
Python 3.12 and torch 2.11, and CUDA."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

CHECK = REPO / "benchmarks" / "gpu" / "check.py"


def _report():
    spec = importlib.util.spec_from_file_location("gpu_check_report", REPO / "benchmarks" / "gpu" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _report()


def _check(*args: str, runs: Path) -> subprocess.CompletedProcess[str]:
    env = {**__import__("os").environ, "ROBENCH_RUNS": str(runs), "COLUMNS": "160"}
    return subprocess.run([sys.executable, str(CHECK), *args], capture_output=True, text=True, timeout=900,
                          cwd=str(REPO), env=env)


def test_committed_gpu_checks_have_the_documented_keys() -> None:
    for path in sorted((REPO / "benchmarks" / "results").glob("**/gpu-check.json")):
        assert report.problems(json.loads(path.read_text())) == [], path


def test_the_schema_check_finds_what_is_wrong() -> None:
    row = dict.fromkeys(report.ROW_KEYS, None) | {"arch": "a", "defense": "d", "precision": "bf16",
                                                   "channels_last": True, "compile": False, "batch_size": 4,
                                                   "images_per_s": 10.0}
    part = {"device": "x", "torch": "2", "date": "d", "commit": "c", "smoke": True, "seconds": 1.0, "rows": [row]}
    good = {"device": "x", "torch": "2", "tf32": {}, "date": "d", "commit": "c", "parts": {"core": part}}
    assert report.problems(good) == []
    renamed = {**row, "throughput": row["images_per_s"]}
    del renamed["images_per_s"]
    bad = {**good, "parts": {"core": {**part, "rows": [renamed]}}}
    assert report.problems(bad) == ["part 'core' row 0: keys differ (extra ['throughput'], missing ['images_per_s'])"]
    no_commit = {k: v for k, v in good.items() if k != "commit"}
    assert report.problems(no_commit) == ["missing top-level key 'commit'"]
    assert report.problems({**good, "parts": {"core": {**part, "rows": [{**row, "batch_size": "4"}]}}})


#: what the GPU machine has installed (REFERENCE section 8), with what they need
GPU_MACHINE_PACKAGES = ("torch", "torchvision", "timm", "numpy", "scipy", "pandas", "tabulate", "matplotlib", "rich",
                        "typer", "pyyaml", "scikit-learn", "safetensors", "pytest", "pytest-xdist", "hypothesis",
                        "tensorboard", "setuptools", "pip")


def _closure(names: tuple[str, ...]) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``names`` and everything they require, here."""
    from packaging.requirements import Requirement

    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional platform dependency not installed here is not there either
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in found:
            continue
        found[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(found.values())


def _gpu_machine_python(root: Path) -> Path:
    """A venv that sees only links to GPU_MACHINE_PACKAGES (and pip, to install robench)."""
    import venv

    venv.EnvBuilder(with_pip=False, symlinks=True).create(root / "venv")
    links = root / "site"
    links.mkdir()
    for dist in _closure(GPU_MACHINE_PACKAGES):
        base = Path(str(dist.locate_file("")))
        for top in {Path(str(f)).parts[0] for f in dist.files or []} - {"..", "__pycache__"}:
            if (base / top).exists() and not (links / top).exists():
                (links / top).symlink_to(base / top)
    (site,) = (root / "venv" / "lib").glob("python3*/site-packages")
    (site / "gpu-machine.pth").write_text(f"{links}\n")
    return root / "venv" / "bin" / "python"


def _sandboxed(script: str, python: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """``script`` in bash with no network, no /usr/share/datasets, an empty HOME and only
    the venv's Python on PATH."""
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(home), "PIP_CONFIG_FILE": "/dev/null",
           "PIP_NO_INDEX": "1", "LANG": "C.UTF-8"}
    inner = f"mount -t tmpfs none /usr/share/datasets && {script}"
    return subprocess.run(["unshare", "-rmn", "bash", "-c", inner], capture_output=True, text=True, env=env,
                          timeout=1200)


@pytest.fixture(scope="module")
def trip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """prepare.sh --smoke here, then device.sh --smoke with every part in the sandbox."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rmn", "true"]).returncode != 0:
        pytest.skip("unshare -rmn is not available here: the GPU machine's conditions cannot be rehearsed")
    root = tmp_path_factory.mktemp("gpu-trip")
    tree, home, out = root / "tree", root / "home", root / "out"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tree / name)
    home.mkdir()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    prepared = subprocess.run(["bash", "benchmarks/gpu/prepare.sh", "--smoke"], cwd=tree, capture_output=True, text=True,
                              env={**os.environ, "ROBENCH_COMMIT": commit, "PYTHON": sys.executable}, timeout=600)
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    python = _gpu_machine_python(root)
    site = tree / "benchmarks" / "gpu" / "prepared" / "site"
    imports = {
        "without": _sandboxed(f"{python} -c 'import pyautoattack'", python, home),
        "with": _sandboxed(f"PYTHONPATH={site} {python} -c 'import pyautoattack'", python, home),
    }
    device = _sandboxed(f"cd {tree} && OUT={out} PYTHON={python} bash benchmarks/gpu/device.sh --smoke "
                        "core fmnist autoattack compile sweep", python, home)
    return {"tree": tree, "out": out, "prepared": prepared, "imports": imports, "device": device, "commit": commit}


def test_prepare_prints_the_command_to_run_there(trip: dict[str, Any]) -> None:
    prepared = trip["tree"] / "benchmarks" / "gpu" / "prepared"
    assert f"ROBENCH_COMMIT={trip['commit']} bash benchmarks/gpu/device.sh --smoke" in trip["prepared"].stdout
    assert (prepared / "commit").read_text().strip() == trip["commit"]
    assert not list(prepared.glob("site/pyautoattack/examples"))  # 45 MB that need not travel
    size = sum(p.stat().st_size for p in prepared.rglob("*") if p.is_file())
    assert size < 40 * 2**20


def test_pyautoattack_comes_only_from_the_prepared_folder(trip: dict[str, Any]) -> None:
    without, with_it = trip["imports"]["without"], trip["imports"]["with"]
    assert without.returncode != 0 and "No module named 'pyautoattack'" in without.stderr, without.stderr
    assert with_it.returncode == 0, with_it.stderr


def test_device_script_runs_every_part_into_one_archive(trip: dict[str, Any]) -> None:
    device = trip["device"]
    assert device.returncode == 0, device.stdout[-3000:] + device.stderr[-3000:]
    assert sorted(p.name for p in trip["out"].iterdir()) == ["gpu-check.tar.gz", "summary.log"]  # what comes back
    summary = (trip["out"] / "summary.log").read_text()
    for part in ("core", "fmnist", "autoattack", "compile", "sweep"):
        assert f"== {part}: about " in summary and f"== {part}: done in " in summary, summary
    with tarfile.open(trip["out"] / "gpu-check.tar.gz") as archive:
        names = archive.getnames()
        doc = json.load(archive.extractfile("check/gpu-check.json"))  # type: ignore[arg-type]
    assert report.problems(doc) == []
    assert sorted(doc["parts"]) == ["autoattack", "compile", "core", "fmnist", "sweep"]
    assert doc["commit"] == trip["commit"] and doc["parts"]["core"]["pytest"]["failed"] == 0
    assert [r["defense"] for r in doc["parts"]["core"]["rows"]] == ["pgd-at", "trades", "mart", "uadat"]
    compiled = [(r["batch_size"], r["defense"]) for r in doc["parts"]["compile"]["rows"] if r["compile"]]
    assert compiled == [(b, d) for b in (4, 8) for d in ("pgd-at", "uadat")]
    (fmnist,) = doc["parts"]["fmnist"]["records"]
    assert f"check/results/{fmnist['file']}" in names and fmnist["accuracy"]["clean"] > 0


def test_the_fashion_mnist_record_read_the_prepared_files(trip: dict[str, Any]) -> None:
    with tarfile.open(trip["out"] / "gpu-check.tar.gz") as archive:
        (member,) = [m for m in archive.getmembers() if "/records/fashion-mnist/" in m.name and m.isfile()]
        record = json.load(archive.extractfile(member))  # type: ignore[arg-type]
    assert record["dataset"] == "fashion-mnist"
    assert record["data_dir"] == str(trip["tree"] / "benchmarks" / "gpu" / "prepared" / "data")


def test_a_part_out_of_time_keeps_its_first_row(tmp_path: Path) -> None:
    """--seconds 0: the first bench row is measured and kept, no other starts."""
    out = tmp_path / "check"
    hurried = _check("core", "--smoke", "--seconds", "0", "--out", str(out), runs=tmp_path / "runs")
    assert hurried.returncode == 0, hurried.stdout[-3000:] + hurried.stderr[-3000:]
    doc = json.loads((out / "gpu-check.json").read_text())
    assert len(doc["parts"]["core"]["rows"]) == 1 and report.problems(doc) == []
    assert "the remaining rows were not started" in (out / "core.log").read_text()
