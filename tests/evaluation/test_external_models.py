"""``robench eval --model package.module:factory``: a user's network, through the CLI,
into a report and onto a board as an external row."""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli
from test_evaluation import _Payload  # unpickling it would write a file: an attacker's weights

from robench.core.registry import get_registry
from robench.evaluation.sequential import percent, subset_indices

HERE = Path(__file__).parent
ENV = {"PYTHONPATH": str(HERE)}  # the user's module, importable as it would be from their folder
N = 60


def _clean_accuracy(model: torch.nn.Module) -> float:
    test = get_registry("dataset").create("digits").load(Path(), 0).test
    idx = subset_indices(len(test), N)
    with torch.no_grad():
        return percent(model(test.images(idx)).argmax(1) == test.y[idx])


def _eval(*args: str) -> tuple[object, dict | None]:
    proc = run_cli("eval", "--data", "digits", "--n-eval", str(N), "-q", *args, env=ENV)
    out = next((args[i + 1] for i, a in enumerate(args) if a == "--out"), None)
    return proc, json.loads(Path(out).read_text()) if proc.returncode == 0 and out else None


def test_a_factorys_network_is_evaluated_as_it_is(tmp_path: Path) -> None:
    from external_factories import digits_linear

    expected = _clean_accuracy(digits_linear())
    assert expected > 80  # a real classifier, so a wrong input pipeline would show
    proc, report = _eval("--model", "external_factories:digits_linear", "--attack", "fgsm", "--attack", "pgd-5",
                         "--eps-sweep", "--out", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    assert report["accuracy"]["clean"] == expected  # no normalisation put in front of [0, 1] inputs
    assert report["accuracy"]["worst case"] <= report["accuracy"]["PGD-5"] <= report["accuracy"]["FGSM"]
    assert (report["defense"], report["arch"], report["source_run_id"]) == (
        "external", "external_factories:digits_linear", "")
    assert report["config"]["arch"] == {"name": "external", "model": "external_factories:digits_linear"}
    assert report["config"]["data"]["normalize"] is False and report["checkpoint"] == ""
    assert {c["name"] for c in report["eval"]["checks"]} == {"eps0-equals-clean", "monotone-in-eps", "large-eps-breaks"}
    assert "robench eval: external_factories:digits_linear (external_factories:digits_linear on digits)" in proc.stdout
    # a static method is a factory too, and the same network gives the same numbers
    _, again = _eval("--model", "external_factories:Zoo.create", "--attack", "fgsm", "--out", str(tmp_path / "z.json"))
    assert again["accuracy"]["clean"] == expected


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_load_into_the_factorys_network(tmp_path: Path, suffix: str) -> None:
    from external_factories import digits_linear
    from safetensors.torch import save_file

    fitted = digits_linear()
    path = tmp_path / f"linear{suffix}"
    if suffix == ".safetensors":
        save_file(fitted.state_dict(), path)
    else:
        torch.save(fitted.state_dict(), path)
    _, blank = _eval("--model", "external_factories:digits_linear_blank", "--attack", "fgsm",
                     "--out", str(tmp_path / "blank.json"))
    _, loaded = _eval("--model", "external_factories:digits_linear_blank", "--weights", str(path), "--attack", "fgsm",
                      "--out", str(tmp_path / "loaded.json"))
    assert loaded["accuracy"]["clean"] == _clean_accuracy(fitted) > blank["accuracy"]["clean"]
    assert loaded["checkpoint"] == str(path) and loaded["source_checkpoint"] == (
        f"external_factories:digits_linear_blank + {path.name}")
    assert loaded["checkpoint_sha256"] != blank["checkpoint_sha256"]


@pytest.mark.parametrize(("args", "expected"), [
    (["--model", "external_factories"], "--model expects package.module:factory"),
    (["--model", "no_such_module:f"], "cannot import 'no_such_module'"),
    (["--model", "external_factories:missing"], "'external_factories' has no 'missing'"),
    (["--model", "external_factories:raises"], "calling it raised RuntimeError: no GPU found (pretend)"),
    (["--model", "external_factories:not_a_module"], "it returned a dict, not a torch.nn.Module"),
    (["--model", "external_factories:digits_linear", "--arch", "smallcnn"], "--model builds its own network"),
    (["--model", "external_factories:digits_linear_blank", "--weights", "EVIL"], "refusing to load"),
    (["--model", "external_factories:digits_linear_blank", "--weights", "SHAPES"], "does not fit"),
])
def test_a_bad_model_is_one_line_and_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    marker = tmp_path / "pwned.txt"
    torch.save({"x": _Payload(marker)}, tmp_path / "evil.pt")
    torch.save({"1.weight": torch.zeros(3, 64), "1.bias": torch.zeros(3)}, tmp_path / "shapes.pt")
    names = {"EVIL": str(tmp_path / "evil.pt"), "SHAPES": str(tmp_path / "shapes.pt")}
    proc = run_cli("eval", "--data", "digits", "-q", *[names.get(a, a) for a in args], env=ENV)
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_without_data_the_model_is_refused_in_one_line() -> None:
    proc = run_cli("eval", "--model", "external_factories:digits_linear", "-q", env=ENV)
    assert proc.returncode == 2 and "--model needs --data" in proc.stderr, proc.stderr


def test_an_external_model_is_a_row_apart_on_its_board(tmp_path: Path) -> None:
    """Beside a board's records the report becomes an external row: shown, not ranked
    with the runs; one row per model (the newest report); every format shows it."""
    results = tmp_path / "results"
    proc = run_cli("run", "--epochs", "1", "--set", "defense.steps=2", "--attack", "fgsm", "--n-eval", str(N),
                   "--set", "eval.checks=false", "--results-dir", str(results), "--runs-dir", str(tmp_path / "runs"),
                   "-q", env=ENV)
    assert proc.returncode == 0, proc.stderr
    before = (results / "digits-linf-3_16.md").read_text()
    for _ in range(2):  # evaluated twice: still one row
        proc, _ = _eval("--model", "external_factories:digits_linear", "--attack", "fgsm",
                        "--results-dir", str(results), "--runs-dir", str(tmp_path / "runs"))
        assert proc.returncode == 0, proc.stderr
        assert f"leaderboard: {results / 'digits-linf-3_16.md'}" in proc.stdout
    board = (results / "digits-linf-3_16.md").read_text()
    ranked, external = board.split("## External models (evaluated by robench, not trained by it)")
    assert ranked.strip() == before.strip()  # the runs' table is untouched
    rows = [line for line in external.splitlines() if line.startswith("| `external_factories")]
    assert len(rows) == 1 and re.search(r"\|\s+60 \| ok\s+\| `model-external_factories_digits_linear-eval-", rows[0])

    def board_as(fmt: str, *more: str) -> str:
        proc = run_cli("leaderboard", "-f", fmt, "--results-dir", str(results), *more)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "External models" in board_as("html") and "External models" in board_as("latex")
    rows = list(csv.DictReader(io.StringIO(board_as("csv"))))
    (ext,) = [r for r in rows if r["kind"] == "external"]
    assert (ext["dataset"], ext["threat"], ext["arch"], float(ext["n_test"])) == (
        "digits", "Linf 3/16", "external_factories:digits_linear", 60)
    assert float(ext["clean mean"]) > 80 and [r["kind"] for r in rows].count("measured") == 1
    only = board_as("markdown", "--defense", "external")
    assert "external_factories:digits_linear" in only and "No runs recorded yet." in only

    # a results folder with no run gets a board for the external model alone
    alone = tmp_path / "alone"
    proc, _ = _eval("--model", "external_factories:digits_linear", "--attack", "fgsm", "--results-dir", str(alone))
    assert proc.returncode == 0, proc.stderr
    assert "No runs recorded yet." in (alone / "digits-linf-3_16.md").read_text()
    assert run_cli("leaderboard", "--refresh", "--results-dir", str(alone)).returncode == 0
    assert "`external_factories:digits_linear`" in (alone / "digits-linf-3_16.md").read_text()


# ------------------------------------------------------------------ the documented RobustBench recipe
def _documented(kind: str, containing: str) -> str:
    text = (REPO / "docs" / "evaluation.md").read_text()
    blocks = re.findall(rf"```{kind}\n(.*?)```", text, re.S)
    (block,) = [b for b in blocks if containing in b]
    return block


def test_the_documented_robustbench_recipe_runs_with_a_stand_in_zoo(tmp_path: Path) -> None:
    """The docs' zoo_models.py, unchanged, with a stand-in ``robustbench.utils.load_model``
    of the same signature (a [0, 1]-input CIFAR-10 network), and the documented command
    on CIFAR-10 files in the real format."""
    from dataset_files import write_cifar10

    (tmp_path / "zoo_models.py").write_text(_documented("python", "from robustbench.utils import load_model"))
    package = tmp_path / "robustbench"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "utils.py").write_text(
        "import torch\nfrom torch import nn\n\n\n"
        "def load_model(model_name: str, dataset: str, threat_model: str) -> nn.Module:\n"
        "    assert (model_name, dataset, threat_model) == ('Carmon2019Unlabeled', 'cifar10', 'Linf')\n"
        "    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(8, 10)).eval()\n")
    write_cifar10(tmp_path / "data")
    command = _documented("bash", "zoo_models:carmon2019").split()
    assert command[:2] == ["robench", "eval"]
    small = ["--set", "data.verify_checksums=false", "--set", "data.val_size=10"]  # the small stand-in files
    proc = run_cli(*command[1:], "--data-root", str(tmp_path / "data"), *small, "--attack", "fgsm", "--n-eval", "20",
                   "--out", str(tmp_path / "zoo.json"), "-q", env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "zoo.json").read_text())
    assert report["arch"] == "zoo_models:carmon2019" and report["threat"]["eps"] == "8/255"
    assert report["eval"]["n"] == 20 and report["dataset"] == "cifar10"
