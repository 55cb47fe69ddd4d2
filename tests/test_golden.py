"""What a restructuring of the code must not change, pinned to committed values.

* The committed boards regenerate byte for byte from their records.
* Short fixed-seed digits runs of every built-in defense, through the real command
  line, give bit-identical weights (``best.pt`` and ``last.pt``), epoch histories and
  accuracies to those in ``tests/golden/digits-runs.json``, on a machine with values there.
* On every machine, with or without its own values, the same runs agree with what every
  recorded machine agrees on: the config hashes, the epochs' learning rates and eps, and
  for the standard-training run (no attack in its training) the best epoch and every
  accuracy, each within one test point of a recorded value. Adversarial training's
  accuracies are not compared across machines: its attacks step by the sign of the input
  gradient, so a last-bit difference of another CPU kind or thread count can change a
  step, and the runs part ways (UAD-AT's clean accuracy after these two epochs is 30.8%
  on one recorded machine and 52.5% on the others). They are checked bit for bit.

The runs go through ``python -m robench run`` and read only the record (JSON) and the
checkpoints (``torch.load`` with ``weights_only``), so this test does not depend on where
the code lives. Bit-exact CPU arithmetic depends on the torch build and the CPU's vector
units: the file keeps one set of values per machine signature (each with the code that
made it), and on a machine it has none for, the bit-exact test says so and skips. Add this
machine's values, or replace them when a change of results is intended (say why in the
commit), with::

    python tests/test_golden.py --made-with "commit abc1234"

After an intended change, other machines' values are stale: ``--drop-others`` removes
them (the runs then skip there until someone adds that machine's values again).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, run_cli

GOLDEN = Path(__file__).resolve().parent / "golden" / "digits-runs.json"

#: every run: 2 epochs, 120 test points, FGSM and PGD-20, the masking checks on 60 points
COMMON = ["--epochs", "2", "--n-eval", "120", "--attack", "fgsm", "--attack", "pgd-20",
          "--set", "eval.check_n=60", "--set", "eval.checkpoints=both"]
RUNS: dict[str, list[str]] = {
    "pgd-at": ["--defense", "pgd-at"],
    "trades": ["--defense", "trades"],
    "mart": ["--defense", "mart"],
    "uadat": ["--defense", "uadat"],
    "standard": ["--defense", "standard", "--seed", "1"],
    "pgd-at-apgd": ["--defense", "pgd-at", "--seed", "2", "--attack", "apgd-ce", "--attack", "apgd-t"],
}


def machine() -> dict[str, str]:
    """What bit-exact CPU results depend on: the torch build and the CPU's vector units."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1]
                break
    except OSError:
        pass
    simd = sorted(f for f in flags.split() if f.startswith(("avx", "amx", "fma", "sse4")))
    return {"torch": torch.__version__, "machine": platform.machine(), "simd": " ".join(simd),
            "threads": str(torch.get_num_threads())}


def weights_digest(path: Path) -> str:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def measure(name: str, folder: Path) -> dict[str, Any]:
    """One run through the command line, reduced to what must not change."""
    results, runs = folder / name / "results", folder / name / "runs"
    proc = run_cli("run", "-q", *COMMON, *RUNS[name], env={"ROBENCH_RESULTS": str(results), "ROBENCH_RUNS": str(runs)},
                   fresh=True)
    assert proc.returncode == 0, proc.stderr
    (path,) = (results / "records").rglob("*.json")
    record = json.loads(path.read_text(encoding="utf-8"))
    (run_dir,) = runs.iterdir()
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in record["history"]]
    checkpoints = {
        k: {"epoch": v["epoch"], "accuracy": v["accuracy"], "checks": v["eval"]["checks"], "flags": v["eval"]["flags"]}
        for k, v in record["checkpoints"].items()
    }
    return {
        "args": RUNS[name],
        "config_hash": record["config_hash"],
        "history": history,
        "checkpoints": checkpoints,
        "selected": record["selected"],
        "weights": {f: weights_digest(run_dir / f"{f}.pt") for f in ("best", "last")},
    }


def _golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def _for_this_machine(golden: dict[str, Any]) -> dict[str, Any] | None:
    here = machine()
    return next((entry for entry in golden["machines"] if entry["machine"] == here), None)


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, Any]]:
    """Each run made once per test module, for both checks below."""
    folder, done = tmp_path_factory.mktemp("golden"), {}

    def get(name: str) -> dict[str, Any]:
        if name not in done:
            done[name] = measure(name, folder)
        return done[name]

    return get


@pytest.mark.parametrize("name", list(RUNS))
def test_fixed_seed_runs_are_bit_identical_to_the_golden_values(
    name: str, measured: Callable[[str], dict[str, Any]]
) -> None:
    golden = _golden()
    entry = _for_this_machine(golden)
    if entry is None:
        known = "; ".join(str(e["machine"]) for e in golden["machines"])
        pytest.skip(f"no golden values for this machine ({machine()}); they exist for: {known}")
    assert (golden["args"], entry["runs"][name]["args"]) == (COMMON, RUNS[name]), "the runs changed: regenerate"
    assert measured(name) == entry["runs"][name]


#: one test point of the runs' evaluation (--n-eval 120) and of digits' validation split (180 images), in %
TEST_POINT, VAL_POINT = 100 / 120, 100 / 180


def figures(run: dict[str, Any]) -> dict[str, Any]:
    """A measured run as flat named figures, the weights' digests left out (bit-exact only)."""
    flat: dict[str, Any] = {"config_hash": run["config_hash"], "selected": run["selected"]}
    for stats in run["history"]:
        flat.update({f"epoch {stats['epoch']} {k}": v for k, v in stats.items() if k != "epoch"})
    for checkpoint, result in run["checkpoints"].items():
        flat[f"{checkpoint} epoch"] = result["epoch"]
        flat.update({f"{checkpoint} {attack}": v for attack, v in result["accuracy"].items()})
    return flat


def _tolerance(key: str, accuracies: bool) -> float | None:
    """Exact (0) for what no summation order changes; a test point for accuracies where
    they are compared; None for what is left to the bit-exact check (losses, times)."""
    if key.endswith((" loss", " accuracy", " seconds")):
        return None
    if key.endswith((" val_clean", " val_pgd")):
        return VAL_POINT if accuracies else None
    if key.split(" ")[0] in ("best", "last") and not key.endswith(" epoch"):
        return TEST_POINT if accuracies else None
    if key in ("selected", "best epoch"):  # chosen by validation accuracy
        return 0.0 if accuracies else None
    return 0.0


def agreed_figures(recorded: list[dict[str, Any]], accuracies: bool) -> dict[str, tuple[float, list[Any]]]:
    """The figures on which every recorded machine agrees (exactly, or within a test
    point for accuracies), each with its tolerance and the recorded values."""
    agreed = {}
    for key, first in recorded[0].items():
        tolerance, values = _tolerance(key, accuracies), [r.get(key) for r in recorded]
        if tolerance is None or any(v is None for v in values):
            continue
        if tolerance == 0.0 and all(v == first for v in values):
            agreed[key] = (0.0, values)
        elif tolerance and max(values) - min(values) <= tolerance + 1e-9:
            agreed[key] = (tolerance, values)
    return agreed


def _matches(value: Any, tolerance: float, recorded: list[Any]) -> bool:
    if not tolerance:
        return any(value == v for v in recorded)
    return isinstance(value, float) and any(abs(value - v) <= tolerance + 1e-9 for v in recorded)


@pytest.mark.parametrize("name", list(RUNS))
def test_fixed_seed_runs_agree_with_every_recorded_machine_where_those_agree(
    name: str, measured: Callable[[str], dict[str, Any]]
) -> None:
    golden = _golden()
    standard = "--defense" in RUNS[name] and RUNS[name][RUNS[name].index("--defense") + 1] == "standard"
    agreed = agreed_figures([figures(e["runs"][name]) for e in golden["machines"]], accuracies=standard)
    assert "config_hash" in agreed and "epoch 2 lr" in agreed, sorted(agreed)
    if standard:  # every accuracy of the standard run is compared
        assert sum(1 for tolerance, _ in agreed.values() if tolerance) == 12, sorted(agreed)
    mine = figures(measured(name))
    off = {key: (mine.get(key), values) for key, (tolerance, values) in agreed.items()
           if not _matches(mine.get(key), tolerance, values)}
    assert not off, f"differs from every recorded machine (here: {machine()}): {off}"


def _boards(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*-*.md"))


@pytest.mark.parametrize("root", ["leaderboards", "leaderboards/ablations/uadat"])
def test_committed_boards_regenerate_byte_for_byte(root: str, tmp_path: Path) -> None:
    committed = REPO / root
    copy = tmp_path / "results"
    shutil.copytree(committed, copy, ignore=shutil.ignore_patterns("*.lock", "plots", "ablations", "sweeps", "tuning"))
    boards = _boards(copy)
    assert boards, f"no boards in {committed}"
    for board in boards:
        board.unlink()
    proc = run_cli("leaderboard", "--refresh", "--results-dir", str(copy), timeout=300, fresh=True)
    assert proc.returncode == 0, proc.stderr
    for board in boards:
        assert board.read_bytes() == (committed / board.name).read_bytes(), board.name


def main() -> None:
    """Add (or replace) this machine's values in the golden file, from runs made here."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--made-with", default="", help="the code the values come from, e.g. a commit")
    parser.add_argument("--drop-others", action="store_true",
                        help="results changed on purpose: drop the values of other machines, now stale")
    parser.add_argument("--keep", action="append", default=[], metavar="THREADS",
                        help="with --drop-others, keep this machine's values at this thread count (repeatable)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        runs = {}
        for name in RUNS:
            print(f"running {name} ...", flush=True)
            runs[name] = measure(name, Path(folder))
    golden = _golden() if GOLDEN.is_file() else {"args": COMMON, "machines": []}
    if golden["args"] != COMMON:
        golden = {"args": COMMON, "machines": []}  # other runs: the old values no longer apply
    others = [e for e in golden["machines"] if e["machine"] != machine()]
    if args.drop_others:
        same_build = {k: v for k, v in machine().items() if k != "threads"}
        others = [e for e in others if e["machine"]["threads"] in args.keep
                  and {k: v for k, v in e["machine"].items() if k != "threads"} == same_build]
    golden["machines"] = [*others, {"machine": machine(), "made_with": args.made_with, "runs": runs}]
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
