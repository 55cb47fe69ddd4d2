"""Data-parallel training through real torchrun processes (gloo on CPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli

from robench.engine.distributed import World, rank_device

#: one optimisation step per epoch: the global batch is the whole digits train split
ONE_STEP = ["--epochs", "1", "--set", "train.batch_size=4096", "--set", "defense.random_start=false",
            "--attack", "fgsm", "--set", "eval.checks=false", "-q"]


@pytest.mark.parametrize("n,size", [(10, 1), (10, 3), (7, 2), (2, 2)])
def test_shards_cover_the_global_batch_once(n: int, size: int) -> None:
    shards = [World(rank, size).shard(n) for rank in range(size)]
    covered = [i for s in shards for i in range(n)[s]]
    assert covered == list(range(n))
    assert max(s.stop - s.start for s in shards) - min(s.stop - s.start for s in shards) <= 1
    # DDP averages the ranks' gradients of weight x shard mean: every image must count 1/n
    for rank, s in enumerate(shards):
        per_image = World(rank, size).loss_weight(s.stop - s.start, n) / size / (s.stop - s.start)
        assert per_image == pytest.approx(1 / n)


def test_a_single_process_keeps_the_gpu_it_was_given() -> None:
    """`robench run --device cuda:1` in one process trains on GPU 1; under torchrun each
    rank takes the GPU of its local rank."""
    assert rank_device(World(), torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert rank_device(World(), torch.device("cuda")) == torch.device("cuda")
    assert rank_device(World(1, 2, 1), torch.device("cuda")) == torch.device("cuda", 1)
    assert rank_device(World(1, 2, 1), torch.device("cpu")) == torch.device("cpu")


def _records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.glob("records/*/*/*.json"))]


def _weights(record: dict, runs: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(runs / record["run_id"] / "last.pt", weights_only=True)
    return ckpt["state_dict"]


def test_two_processes_take_the_single_process_step(tmp_path: Path) -> None:
    """`robench run --nproc 2` (a real torchrun, 2 gloo processes): one record, and after
    one step on the same global batch the weights equal the single-process step's, also
    with --compile."""
    runs = tmp_path / "runs"
    env = {"ROBENCH_RUNS": str(runs)}
    single = run_cli("run", *ONE_STEP, "--results-dir", str(tmp_path / "one"), env=env)
    assert single.returncode == 0, single.stderr
    double = run_cli("run", *ONE_STEP, "--nproc", "2", "--results-dir", str(tmp_path / "two"),
                     "--logger", "tensorboard", "--set", "engine.log_every=1", env=env)
    assert double.returncode == 0, double.stderr
    assert double.stdout.count("record:") == 1  # rank 0 alone reports
    (one,) = _records(tmp_path / "one")
    (two,) = _records(tmp_path / "two")
    assert two["device"].startswith("2 x cpu") and one["device"].startswith("cpu")
    assert two["config_hash"] != one["config_hash"]  # per-shard BatchNorm: another computation
    assert (one["distributed"], two["distributed"]) == ({"world_size": 1, "sync_bn": False}, {"world_size": 2, "sync_bn": False})
    assert len(list(runs.iterdir())) == 2  # one run folder per run, not per process
    assert len(list((runs / two["run_id"] / "tensorboard").glob("events.*"))) == 1  # rank 0 alone logs

    w1, w2 = _weights(one, runs), _weights(two, runs)
    torch.manual_seed(0)  # the initial weights, as the runs drew them (seed 0)
    from robench.core.config import resolve, validate
    from robench.workflows.plans import build_model, plan_run

    init = build_model(plan_run(validate(resolve(None, {})))).state_dict()
    moved = max((w1[k] - init[k]).abs().max().item() for k in init)
    assert moved > 1e-4  # the step changed the weights, by far more than the tolerance below
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-5, atol=1e-7, msg=key)

    # DDP first, then torch.compile (the supported order): the same step again
    compiled = run_cli("run", *ONE_STEP, "--nproc", "2", "--compile", "--results-dir", str(tmp_path / "two-c"), env=env)
    assert compiled.returncode == 0, compiled.stderr
    (two_c,) = _records(tmp_path / "two-c")
    assert two_c["config_hash"] == two["config_hash"]  # compiling is not another experiment
    w3 = _weights(two_c, runs)
    for key in w1:
        # inductor's fused kernels round differently (a few parts in a thousand of the step
        # here); a gradient left out of DDP's all-reduce would be off by about half of it
        update = (w1[key] - init[key]).abs().max()
        assert (w3[key] - w1[key]).abs().max() <= 0.02 * update, key


def test_uadat_double_backward_under_torchrun(tmp_path: Path) -> None:
    """The documented form `torchrun --nproc-per-node 2 -m robench run ...`, with UAD-AT's
    gradient alignment (autograd.grad with create_graph, then one backward, under DDP)."""
    env = {**os.environ, "ROBENCH_RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "robench", "run", "--defense", "uadat", "--epochs", "1", "--set", "train.batch_size=256",
         "--attack", "fgsm", "--set", "eval.checks=false", "--results-dir", str(tmp_path / "res"), "-q"],
        capture_output=True, text=True, env=env, timeout=600, cwd=str(REPO),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (rec,) = _records(tmp_path / "res")
    assert rec["defense"]["name"] == "uadat" and rec["device"].startswith("2 x cpu")
    assert rec["history"][0]["loss"] > 0 and rec["accuracy"]["clean"] > 10


def test_nproc_errors_are_one_line(tmp_path: Path) -> None:
    bad = run_cli("run", "--nproc", "2", "--set", "train.batch_size=1", "--results-dir", str(tmp_path))
    assert bad.returncode == 2 and "global batch" in bad.stderr and "Traceback" not in bad.stderr
    zero = run_cli("run", "--nproc", "0", "--results-dir", str(tmp_path))
    assert zero.returncode == 2 and "--nproc" in zero.stderr
    sync = run_cli("run", "--set", "engine.sync_bn=true", "--device", "cpu", "--results-dir", str(tmp_path))
    assert sync.returncode == 2 and "SyncBatchNorm needs CUDA" in sync.stderr
    assert "Traceback" not in sync.stderr


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in their own sessions)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


#: a short 2-process run whose second epoch has 40 steps to stop in
RESUMABLE = ["--epochs", "2", "--set", "defense.steps=2", "--set", "train.batch_size=32", "--attack", "fgsm",
             "--set", "eval.checks=false", "--set", "eval.n_eval=64", "-q", "--nproc", "2"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """The RESUMABLE run left alone: its record and its runs folder (shared by the resume tests)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    whole = run_cli("run", *RESUMABLE, "--results-dir", str(root / "res"), env={"ROBENCH_RUNS": str(root / "runs")})
    assert whole.returncode == 0, whole.stderr
    (record,) = _records(root / "res")
    return record, root / "runs"


def test_killed_torchrun_run_resumes_to_the_uninterrupted_result(tmp_path: Path, uninterrupted: tuple[dict, Path]) -> None:
    """SIGKILL to a `--nproc 2` run after its first epoch, then `--resume RUN --nproc 2`:
    the same weights as the run left alone (data order, per-rank attack noise and BN
    statistics all come back from last.pt)."""
    import contextlib
    import signal
    import time

    args = RESUMABLE
    runs = tmp_path / "runs-cut"
    env = {**os.environ, "ROBENCH_RUNS": str(runs), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "robench", "run", *args, "--results-dir", str(tmp_path / "cut")],
                            cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(runs.glob("*/log.jsonl")):
            assert proc.poll() is None and time.monotonic() < deadline, "no epoch finished before the run ended"
            time.sleep(0.05)
    finally:
        for pid in [proc.pid, *_descendants(proc.pid)]:  # the launcher, torchrun and both ranks
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    (run_dir,) = runs.iterdir()
    resumed = run_cli("run", "--resume", run_dir.name, "--nproc", "2", "--results-dir", str(tmp_path / "cut"),
                      env={"ROBENCH_RUNS": str(runs)})
    assert resumed.returncode == 0, resumed.stderr
    (a, whole_runs), (b,) = uninterrupted, _records(tmp_path / "cut")
    assert b["notes"] and "resumed after epoch" in b["notes"][0]
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert a["accuracy"] == b["accuracy"]
    wa, wb = _weights(a, whole_runs), _weights(b, runs)
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_sigterm_mid_epoch_under_torchrun_resumes_bit_identical(tmp_path: Path, uninterrupted: tuple[dict, Path]) -> None:
    """SIGTERM to `robench run --nproc 2` in the middle of an epoch: the launcher passes it
    to torchrun, the ranks agree on a step, last.pt keeps each rank's generator states,
    and `--resume RUN --nproc 2` ends with the uninterrupted run's weights, bit for bit."""
    import signal
    import time

    args = RESUMABLE
    runs = tmp_path / "runs-cut"
    env = {**os.environ, "ROBENCH_RUNS": str(runs), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "robench", "run", *args, "--results-dir", str(tmp_path / "cut")],
                            cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(runs.glob("*/log.jsonl")):  # epoch 1 done: epoch 2's 40 steps are under way
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first epoch did"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # to the launcher only, as `kill PID` does
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "stopped by SIGTERM after step" in stderr and "in epoch 2" in stderr, stderr
    (run_dir,) = runs.iterdir()
    state = torch.load(run_dir / "last.pt", weights_only=True)["train_state"]
    assert 0 < state["partial"]["steps_done"] < 40 and state["world_size"] == 2
    ranks = state["ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["rng"]["torch"], ranks[1]["rng"]["torch"])
    assert ranks[0]["partial"]["loss_sum"] != ranks[1]["partial"]["loss_sum"]

    alone = run_cli("run", "--resume", run_dir.name, env={"ROBENCH_RUNS": str(runs)})
    assert alone.returncode == 2 and "resume it with --nproc 2" in alone.stderr and "Traceback" not in alone.stderr
    resumed = run_cli("run", "--resume", run_dir.name, "--nproc", "2", "--results-dir", str(tmp_path / "cut"),
                      env={"ROBENCH_RUNS": str(runs)})
    assert resumed.returncode == 0, resumed.stderr
    (a, whole_runs), (b,) = uninterrupted, _records(tmp_path / "cut")
    assert "step" in b["notes"][0]
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    wa, wb = _weights(a, whole_runs), _weights(b, runs)
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    assert a["distributed"] == {"world_size": 2, "sync_bn": False}
