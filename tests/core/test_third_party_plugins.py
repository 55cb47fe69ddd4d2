"""Third-party plugins end to end: a fake distribution on PYTHONPATH, the real CLI.

Two distributions are written as ``*.dist-info`` folders next to their modules:

* ``acme-robench 1.0``: a defense (``acme-noise``) and an architecture (``acme-mlp``)
  that work;
* ``broken-robench 0.1``: a defense whose module raises ImportError on import and an
  "attack" that is a plain function.

robench must discover them through entry points exactly as it discovers its own
plugins, run with the good ones, report the broken ones without a traceback, and
never let the broken distribution stop anything else.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

ACME_PLUGINS = '''
    """A third-party plugin module, as a user would write it."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from robench.api import Architecture, Defense, LossOutput


    class NoisyTraining(Defense):
        """Cross-entropy on inputs with small uniform noise, kept in [0, 1]."""

        def loss(self, model, x, y, threat):
            noisy = (x + torch.empty_like(x).uniform_(-0.05, 0.05)).clamp(0.0, 1.0)
            logits = model(noisy)
            return LossOutput(F.cross_entropy(logits, y), logits)


    class MLP(Architecture):
        def build(self, num_classes, input_shape):
            c, h, w = input_shape
            return nn.Sequential(
                nn.Flatten(), nn.Linear(c * h * w, 64), nn.ReLU(), nn.Linear(64, num_classes)
            )


    def helper_function():
        return 42
'''

#: parameters of acme-mlp on digits (1x8x8 inputs, 10 classes): 64*64+64 + 64*10+10
ACME_MLP_PARAMS = 64 * 64 + 64 + 64 * 10 + 10

_KIND_OF_GROUP = {
    "robench.datasets": "dataset", "robench.architectures": "architecture",
    "robench.defenses": "defense", "robench.attacks": "attack", "robench.loggers": "logger",
}
# robench's own plugins, read from its installed distribution metadata
BUILTINS = {
    (_KIND_OF_GROUP[ep.group], ep.name)
    for ep in importlib.metadata.distribution("robench").entry_points
    if ep.group in _KIND_OF_GROUP
}


def _dist_info(root: Path, name: str, version: str, entry_points: str) -> None:
    folder = root / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir()
    (folder / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    (folder / "entry_points.txt").write_text(textwrap.dedent(entry_points).lstrip(), encoding="utf-8")


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder that, on PYTHONPATH, holds two installed third-party distributions."""
    root = tmp_path_factory.mktemp("site")
    (root / "acme_plugins.py").write_text(textwrap.dedent(ACME_PLUGINS), encoding="utf-8")
    (root / "broken_plugins_mod_that_fails.py").write_text('raise ImportError("boom")\n', encoding="utf-8")
    _dist_info(
        root, "acme-robench", "1.0",
        """
        [robench.defenses]
        acme-noise = acme_plugins:NoisyTraining

        [robench.architectures]
        acme-mlp = acme_plugins:MLP
        """,
    )
    _dist_info(
        root, "broken-robench", "0.1",
        """
        [robench.defenses]
        broken-def = broken_plugins_mod_that_fails:Thing

        [robench.attacks]
        not-an-attack = acme_plugins:helper_function
        """,
    )
    return root


def robench_cli(site: Path, results: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("ROBENCH_DEBUG", None)  # a traceback on purpose would defeat the tests below
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    env["ROBENCH_RESULTS"] = str(results)
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "robench", *args],
        capture_output=True, text=True, env=env, timeout=300, cwd=str(REPO),
    )


def table_rows(stdout: str) -> dict[tuple[str, str], dict[str, str]]:
    """The rows of the ``robench list`` table, keyed by (kind, name).

    A cell that wraps continues on the next line with an empty ``kind`` cell; the
    pieces are joined with spaces, so compare with whitespace collapsed.
    """
    columns = ("kind", "name", "distribution", "object", "status")
    rows: list[dict[str, str]] = []
    for line in stdout.splitlines():
        for sep in ("│", "|"):
            if line.lstrip().startswith(sep):
                cells = [c.strip() for c in line.strip().strip(sep).split(sep)]
                break
        else:
            continue
        if len(cells) != len(columns):
            continue
        if cells[0]:
            rows.append(dict(zip(columns, cells)))
        else:
            assert rows, line
            for column, cell in zip(columns, cells):
                if cell:
                    rows[-1][column] = f"{rows[-1][column]} {cell}"
    out = {}
    for row in rows:
        key = (row["kind"], row["name"])
        assert key not in out, f"duplicate row {key}"
        out[key] = row
    return out


def broken_lines(stdout: str) -> list[str]:
    """The full errors that ``robench list`` prints below its table, one line each."""
    return [line for line in stdout.splitlines() if line.startswith("broken: ")]


# --------------------------------------------------------------------------------- list
def test_list_shows_third_party_and_broken_plugins(plugin_site: Path, tmp_path: Path) -> None:
    proc = robench_cli(plugin_site, tmp_path / "results", "list")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    rows = table_rows(proc.stdout)

    for key in (("defense", "acme-noise"), ("architecture", "acme-mlp")):
        row = rows[key]
        assert row["distribution"] == "acme-robench 1.0", row
        assert row["status"] == "ok", row
    assert rows[("defense", "acme-noise")]["object"] == "acme_plugins:NoisyTraining"

    broken_def = rows[("defense", "broken-def")]
    assert broken_def["distribution"] == "broken-robench 0.1"
    assert broken_def["status"] == "broken"
    errors = broken_lines(proc.stdout)
    assert len(errors) == 2
    (def_error,) = [e for e in errors if "'broken-def'" in e]
    assert "boom" in def_error and "ImportError" in def_error and "broken-robench 0.1" in def_error

    not_attack = rows[("attack", "not-an-attack")]
    assert not_attack["distribution"] == "broken-robench 0.1"
    assert not_attack["status"] == "broken"
    (attack_error,) = [e for e in errors if "'not-an-attack'" in e]
    assert "not a subclass" in attack_error and "helper_function" in attack_error

    for key in BUILTINS:
        assert rows[key]["status"] == "ok", rows[key]
        assert rows[key]["distribution"].startswith("robench "), rows[key]
    # nothing else is broken, and nothing is missing or extra
    assert set(rows) == BUILTINS | {
        ("defense", "acme-noise"), ("architecture", "acme-mlp"),
        ("defense", "broken-def"), ("attack", "not-an-attack"),
    }
    assert [k for k, r in rows.items() if r["status"].startswith("broken")] == [
        ("defense", "broken-def"), ("attack", "not-an-attack"),
    ]
    assert "2 broken plugin(s)" in proc.stderr


def test_list_one_kind(plugin_site: Path, tmp_path: Path) -> None:
    proc = robench_cli(plugin_site, tmp_path / "results", "list", "defense")
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    assert set(rows) == {("defense", "acme-noise"), ("defense", "broken-def")} | {
        row for row in BUILTINS if row[0] == "defense"
    }
    for absent in ("acme-mlp", "not-an-attack", "smallcnn", "digits", "acme_plugins:MLP"):
        assert absent not in proc.stdout
    assert "1 broken plugin(s)" in proc.stderr


# ---------------------------------------------------------------------------------- run
def test_run_with_third_party_defense_and_architecture(plugin_site: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = robench_cli(
        plugin_site, results,
        "run", "--defense", "acme-noise", "--arch", "acme-mlp", "--epochs", "1",
        "--attack", "pgd-2", "-q",
    )
    assert proc.returncode == 0, proc.stderr
    # the broken distribution is never imported for a run that does not name it
    assert "broken" not in proc.stderr and "Traceback" not in proc.stderr

    files = sorted((results / "records" / "digits").rglob("*.json"))
    assert len(files) == 1, files
    rec = json.loads(files[0].read_text(encoding="utf-8"))
    assert rec["defense"]["name"] == "acme-noise"
    assert rec["arch"]["name"] == "acme-mlp"
    assert rec["arch"]["num_params"] == ACME_MLP_PARAMS  # acme's build() made the model
    assert rec["dataset"] == "digits"
    assert rec["train"]["epochs"] == 1 and len(rec["history"]) == 1
    assert list(rec["accuracy"]) == ["clean", "PGD-2", "worst case"]
    assert rec["accuracy"]["clean"] > 20.0  # it trained: well above the 10 % of guessing

    boards = sorted(results.glob("digits-*.md"))
    assert len(boards) == 1, boards
    board = boards[0].read_text(encoding="utf-8")
    assert "acme-noise" in board and "acme-mlp" in board
    assert f"{rec['accuracy']['PGD-2']:.2f}" in board


def test_run_with_broken_plugin_fails_in_one_line(plugin_site: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = robench_cli(plugin_site, results, "run", "--defense", "broken-def", "--epochs", "1", "-q")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert "broken-def" in line and "broken-robench" in line and "boom" in line
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not list(results.rglob("*.json"))  # it failed before any work
