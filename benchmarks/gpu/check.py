"""The GPU check: robench on one CUDA device, in parts that each fit in a few minutes.

    python benchmarks/gpu/check.py core    --out DIR   # pytest -m gpu, matmul ceiling, eager bench
    python benchmarks/gpu/check.py autoattack --out DIR   # AutoAttack on the GPU against the CPU
    python benchmarks/gpu/check.py compile --out DIR   # the bench rows under torch.compile
    python benchmarks/gpu/check.py fmnist  --out DIR   # one real Fashion-MNIST run, its record
    python benchmarks/gpu/check.py sweep   --out DIR --minutes 4   # the Fashion-MNIST sweep, budgeted
    python benchmarks/gpu/check.py table   --out DIR   # the Markdown table of DIR/gpu-check.json

Every part merges its results into ``DIR/gpu-check.json`` (schema in ``report.py``) as
soon as each row is measured, and writes ``DIR/<part>.log``; records go to
``DIR/results``. A part stops starting new rows when its ``--seconds`` are spent, so
that what it measured comes back even when the machine's time is short. ``--smoke``
runs every part at toy sizes on whatever device there is (CI runs it on a CPU), so the
script never rots; smoke numbers mean nothing.

On a copy of the source without ``.git``, set ``ROBENCH_COMMIT`` to the commit.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report

from robench.core.provenance import git_commit
from robench.workflows.bench import REFERENCE_SWITCHES, ROBENCH_SWITCHES, BenchRow, bench

REPO = Path(__file__).resolve().parents[2]
DEFENSES = ("pgd-at", "trades", "mart", "uadat")


class OutOfTime(Exception):
    """The part's seconds are spent: no further row starts."""


class Part:
    """One part's log, its entry in ``gpu-check.json`` and its clock."""

    def __init__(self, name: str, out: Path, smoke: bool, seconds: float) -> None:
        self.name, self.out, self.smoke = name, out, smoke
        self.deadline = time.monotonic() + seconds
        self.started = time.monotonic()
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = (out / f"{name}.log").open("a")
        self.entry: dict[str, Any] = {
            "device": device_name(), "torch": torch.__version__, "date": now(), "commit": git_commit(REPO),
            "smoke": smoke, "seconds": 0.0, "rows": [],
        }
        self.log(f"== {name} on {self.entry['device']}, torch {torch.__version__}, commit {self.entry['commit']}"
                 + (" (smoke)" if smoke else ""))

    def log(self, text: str) -> None:
        print(text, flush=True)
        self.log_file.write(text + "\n")
        self.log_file.flush()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.entry["seconds"] = round(time.monotonic() - self.started, 1)
        header = {"device": self.entry["device"], "torch": torch.__version__, "tf32": tf32_settings(),
                  "date": self.entry["date"], "commit": self.entry["commit"]}
        report.merge_part(self.out / "gpu-check.json", header, self.name, self.entry)

    def run(self, cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> int:
        """A subprocess with its output in the log; a timeout counts as exit status 124."""
        self.log("$ " + " ".join(cmd))
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 1.0), cwd=str(REPO),
                                  env={**os.environ, "COLUMNS": "160", **(env or {})})
        except subprocess.TimeoutExpired as exc:
            self.log(_text(exc.stdout) + _text(exc.stderr) + f"\n(stopped after {timeout:.0f} s)")
            return 124
        self.log(done.stdout + done.stderr)
        return done.returncode


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def tf32_settings() -> dict[str, Any]:
    """The switches each side of the bench ran with, and this process's defaults."""
    return {
        "defaults": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "reference": {"matmul": REFERENCE_SWITCHES["tf32_matmul"], "cudnn": REFERENCE_SWITCHES["tf32_conv"]},
        "robench_training": {"matmul": ROBENCH_SWITCHES["tf32_matmul"], "cudnn": ROBENCH_SWITCHES["tf32_conv"]},
        "robench_evaluation": {"matmul": False, "cudnn": False},
    }


def bench_rows(part: Part, arch: str, batch_size: int, *, compile_model: bool, defenses: Sequence[str] = DEFENSES) -> None:
    """Bench rows for the defenses (bf16, channels-last), each saved as soon as measured."""
    dev = device()
    smoke = part.smoke
    size = 8 if smoke else 32
    peak = report.PEAK_BF16_TFLOPS if dev.type == "cuda" else None

    def keep(row: BenchRow) -> None:
        part.entry["rows"].append(as_row(row, arch, batch_size, compile_model))
        part.save()
        part.log(json.dumps(part.entry["rows"][-1]))
        if part.left() < 0:
            raise OutOfTime

    bench(defenses, arch, batch_size=batch_size, size=size, device=dev, repeats=1 if smoke else 3,
          warmup=(1 if smoke else 2) if compile_model else (0 if smoke else 1), peak_tflops=peak,
          precision="bf16", channels_last=True, compile_model=compile_model, on_row=keep)


def as_row(row: BenchRow, arch: str, batch_size: int, compile_model: bool) -> dict[str, Any]:
    return {
        "arch": arch, "defense": row.defense, "precision": "bf16", "channels_last": True, "compile": compile_model,
        "batch_size": batch_size, "images_per_s": row.images_per_s,
        "reference_images_per_s": row.reference_images_per_s, "tflops": row.tflops,
        "fraction_of_peak": row.peak_fraction, "peak_memory_gb": row.peak_memory_gb,
    }


def matmul_ceiling(smoke: bool) -> float:
    """TFLOP/s of one large bf16 matmul: the most this device gives robench's kernels."""
    n, iters = (256, 3) if smoke else (8192, 50)
    dev = device()
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(2):
        a @ b
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - start) / 1e12


def pytest_summary(xml_path: Path, returncode: int) -> dict[str, Any]:
    counts = {"returncode": returncode, "passed": 0, "failed": 0, "skipped": 0}
    if not xml_path.is_file():
        return counts
    for suite in ET.parse(xml_path).getroot().iter("testsuite"):
        tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
        failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        counts["failed"] += failed
        counts["skipped"] += skipped
        counts["passed"] += tests - failed - skipped
    return counts


def gpu_tests(part: Part, select: str, seconds: float) -> None:
    """``pytest -m gpu tests/gpu -k SELECT``; its counts go into the part's entry."""
    xml = part.out / f"{part.name}-pytest.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-k", select, "-q", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]
    part.entry["pytest"] = pytest_summary(xml, part.run(cmd, timeout=seconds))


def part_core(part: Part, pytest_seconds: float) -> None:
    gpu_tests(part, "not autoattack", pytest_seconds)
    part.entry["matmul_bf16_tflops"] = matmul_ceiling(part.smoke)
    part.log(f"pytest -m gpu: {part.entry['pytest']}; bf16 matmul ceiling {part.entry['matmul_bf16_tflops']:.1f} TFLOP/s")
    part.save()
    bench_rows(part, "smallcnn" if part.smoke else "wrn-34-10", 4 if part.smoke else 128, compile_model=False)


def part_autoattack(part: Part) -> None:
    """AutoAttack on the device against the CPU (the CPU side takes minutes)."""
    gpu_tests(part, "autoattack", part.left())
    part.save()


def part_compile(part: Part) -> None:
    """WRN-34-10 first (the goal's row), then PreAct-ResNet-18. Dynamo's caches are emptied
    between them: the two architectures' graphs of one forward method together reach its
    recompile limit. A failure of one architecture is logged and the next one still runs.
    With --smoke: the small CNN at two batch sizes, PGD-AT and UAD-AT (its eager outer loss) only."""
    plan = ([("smallcnn", 4), ("smallcnn", 8)] if part.smoke else [("wrn-34-10", 128), ("preact-resnet-18", 512)])
    for arch, batch in plan:
        torch._dynamo.reset()
        try:
            bench_rows(part, arch, batch, compile_model=True, defenses=("pgd-at", "uadat") if part.smoke else DEFENSES)
        except OutOfTime:
            raise
        except Exception as exc:  # one architecture's compile error must not lose the other's rows
            part.entry.setdefault("errors", []).append(f"{arch}: {type(exc).__name__}: {exc}"[:500])
            part.log(f"{arch} under torch.compile failed: {type(exc).__name__}: {exc}")
            part.save()


def robench_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "robench", *args]


def part_fmnist(part: Part, data_root: str | None) -> None:
    """One PGD-AT run of TRADES' MNIST CNN on Fashion-MNIST in bf16; its record lands in DIR/results.
    With --smoke the same run on 256 of the real training images, one epoch, FGSM on 50."""
    results = part.out / "results"
    args = ["run", "--config", "configs/fashion-mnist/pgd-at-trades-smallcnn.yaml", "--set", "eval.n_eval=1000"]
    if part.smoke:
        args += ["--epochs", "1", "--set", "data.train_subset=256", "--set", "data.val_size=64", "--set", "defense.steps=2",
                 "--attack", "fgsm", "--set", "eval.n_eval=50", "--set", "eval.checks=false"]
    args += ["--results-dir", str(results), "--runs-dir", str(runs_dir()), "-q"]
    args += ["--data-root", data_root] if data_root else []
    code = part.run(robench_cli(*args), timeout=part.left())
    part.entry["returncode"] = code
    part.entry["records"] = _records(results)
    part.save()


def part_sweep(part: Part, minutes: float) -> None:
    """The Fashion-MNIST sweep under a budget: no run starts that the budget cannot finish."""
    results = part.out / "results"
    if part.smoke:
        # two short digits runs: the smoke test checks the budget's plumbing
        args = ["sweep", "--defense", "pgd-at", "--defense", "standard", "--seeds", "0",
                "--set", "train.epochs=1", "--set", "attacks=[fgsm]",
                "--set", "eval.eps_sweep=false", "--set", "eval.n_eval=50",
                "--set", "eval.checks=false", "--set", "eval.checkpoints=selected"]
    else:
        args = ["sweep", "configs/sweeps/fashion-mnist.yaml"]
    args += ["--budget", f"{minutes:g}", "--results-dir", str(results), "--runs-dir", str(runs_dir()), "-q"]
    part.entry["returncode"] = part.run(robench_cli(*args), timeout=minutes * 60 + 60)
    part.entry["records"] = _records(results)
    part.save()


def runs_dir() -> Path:
    """Checkpoints stay outside DIR: they are large and need not travel back."""
    return Path(os.environ.get("ROBENCH_RUNS") or Path.home() / "robench-gpu-check-runs")


def _records(results: Path) -> list[dict[str, Any]]:
    """Each record's file and headline numbers."""
    found = []
    for path in sorted(results.glob("records/*/*/*.json")):
        rec = json.loads(path.read_text())
        found.append({"file": str(path.relative_to(results)), "run_id": rec.get("run_id"),
                      "defense": rec["defense"]["name"], "accuracy": rec.get("accuracy")})
    return found


PARTS: dict[str, Callable[[Part, argparse.Namespace], None]] = {
    "core": lambda part, a: part_core(part, a.pytest_seconds),
    "autoattack": lambda part, a: part_autoattack(part),
    "compile": lambda part, a: part_compile(part),
    "fmnist": lambda part, a: part_fmnist(part, a.data_root),
    "sweep": lambda part, a: part_sweep(part, a.minutes),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=[*PARTS, "table"])
    parser.add_argument("--out", type=Path, required=True, help="folder of gpu-check.json, the logs and records")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on any device (numbers mean nothing)")
    parser.add_argument("--seconds", type=float, default=270.0,
                        help="no bench row starts after these, counted from the part's start (default 270)")
    parser.add_argument("--pytest-seconds", type=float, default=200.0, help="core: limit of pytest -m gpu (default 200)")
    parser.add_argument("--minutes", type=float, default=4.0, help="sweep: the budget (default 4)")
    parser.add_argument("--data-root", default=None, help="fmnist: where the Fashion-MNIST files are")
    args = parser.parse_args(argv)
    if args.part == "table":
        print(report.table(report.load(args.out / "gpu-check.json")))
        return 0
    part = Part(args.part, args.out, args.smoke, args.seconds)
    try:
        PARTS[args.part](part, args)
    except OutOfTime:
        part.log(f"out of time after {part.entry['seconds']} s: the remaining rows were not started")
    part.save()
    found = report.problems(report.load(args.out / "gpu-check.json"))
    for problem in found:
        part.log(f"gpu-check.json: {problem}")
    failed = (part.entry.get("returncode", 0) or (part.entry.get("pytest") or {}).get("returncode", 0)
              or part.entry.get("errors"))
    part.log(f"== {args.part} done in {part.entry['seconds']} s" + ("" if not (found or failed) else ", with failures"))
    return 1 if found or failed else 0


if __name__ == "__main__":
    sys.exit(main())
