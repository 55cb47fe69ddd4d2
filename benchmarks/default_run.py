"""How long the first impression takes: ``robench run`` with no arguments, timed end to end.

Why this exists
---------------
A new user's first command is ``robench run``. Our goal is that it finishes (trained,
evaluated on all 360 test images with the default suite, recorded, table printed) in
at most 60 s on a 2-core laptop CPU, median of 5 runs. This script measures that the
way a user meets it: a real ``robench run`` subprocess from the command line to its
exit, each in a fresh temporary folder (so no run finds an earlier one's files).

With ``--reference`` it also times, interleaved with the default, the full protocol
the default trimmed: both checkpoints evaluated and 20 epochs
(``--epochs 20 --set eval.checkpoints=both``, what the committed digits board uses),
and prints the ratio default / full.

What it prints
--------------
The machine (CPU, torch, load average: other processes skew a 2-core machine), then per
run the wall seconds of the whole command, the seconds the run itself reports
(``wall_time_s`` in its record: training and evaluation, without interpreter start-up)
and the accuracies the record reports, then the medians and the ratio to the 60 s
goal. It exits with status 1 if a run fails or the default runs disagree on their
accuracies (the default run is deterministic on a CPU).

How to run
----------
    python benchmarks/default_run.py                  # 5 runs, about 5 minutes
    python benchmarks/default_run.py --repeats 3 --reference
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

GOAL_S = 60.0
REFERENCE_ARGS = ("--epochs", "20", "--set", "eval.checkpoints=both")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Time `robench run` with no arguments, end to end.")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of the default (default 5)")
    p.add_argument("--reference", action="store_true",
                   help="also time the full protocol (20 epochs, both checkpoints), interleaved")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def time_run(extra: tuple[str, ...]) -> tuple[float, dict]:
    """One ``robench run -q`` in a fresh folder: its wall seconds and its record."""
    with tempfile.TemporaryDirectory(prefix="robench-first-run-") as folder:
        env = {k: v for k, v in os.environ.items() if k not in ("ROBENCH_RESULTS", "ROBENCH_RUNS")}
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "robench", "run", "-q", *extra],
                              cwd=folder, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"robench run {' '.join(extra)} failed ({proc.returncode}): {proc.stderr.strip()}")
        records = list((Path(folder) / "robench-results" / "records").rglob("*.json"))
        if len(records) != 1:
            raise SystemExit(f"expected one record under {folder}/robench-results, found {len(records)}")
        return wall, json.loads(records[0].read_text(encoding="utf-8"))


def machine() -> list[str]:
    cpu = "model unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = "load average {:.2f} {:.2f} {:.2f} (1/5/15 min)".format(*os.getloadavg())
    except OSError:
        load = "load average unavailable"
    return [
        f"python   {platform.python_version()} on {platform.platform()}",
        f"cpu      {cpu}; {os.cpu_count()} cores; {load}",
        f"torch    {torch.__version__}, {torch.get_num_threads()} threads",
    ]


def describe(record: dict) -> str:
    acc = record["accuracy"]
    chosen = record["selected"]
    epoch = record["checkpoints"][chosen]["epoch"]
    return (f"{chosen} (epoch {epoch}) clean {acc['clean']:.2f}  PGD-20 {acc['PGD-20']:.2f}  "
            f"worst {min(acc.values()):.2f}  evaluated: {', '.join(record['checkpoints'])}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("\n".join(machine()))
    variants = {"default": ()} | ({"full": REFERENCE_ARGS} if args.reference else {})
    walls: dict[str, list[float]] = {name: [] for name in variants}
    inner: dict[str, list[float]] = {name: [] for name in variants}
    results: dict[str, set[str]] = {name: set() for name in variants}
    for i in range(args.repeats):
        order = list(variants) if i % 2 == 0 else list(reversed(variants))
        for name in order:
            wall, record = time_run(variants[name])
            walls[name].append(wall)
            inner[name].append(float(record["wall_time_s"]))
            results[name].add(describe(record))
            print(f"{name:8} run {i + 1}: {wall:6.1f} s wall ({record['wall_time_s']:.1f} s in the run)  "
                  f"{describe(record)}", flush=True)
    print()
    for name in variants:
        median = statistics.median(walls[name])
        print(f"{name:8} median {median:6.1f} s wall of {args.repeats} "
              f"(min {min(walls[name]):.1f}, max {max(walls[name]):.1f}; "
              f"{statistics.median(inner[name]):.1f} s in the run); "
              f"{median / GOAL_S:.2f} x the {GOAL_S:.0f} s goal")
    if args.reference:
        print(f"ratio default / full: {statistics.median(walls['default']) / statistics.median(walls['full']):.2f}")
    if len(results["default"]) != 1:
        print("the default runs disagree:\n  " + "\n  ".join(sorted(results["default"])))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
