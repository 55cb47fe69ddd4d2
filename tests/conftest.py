"""Shared helpers: run the real ``robench`` CLI in a process of its own."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from forked_cli import Zygote

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, share the cores among the workers: each worker and the
    subprocesses it starts get cores / workers threads. More threads than cores makes
    OpenMP's spinning threads wait on each other, and tests run ten times slower."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def _cli_env(env: dict[str, str | None] | None) -> dict[str, str]:
    """This process's environment, COLUMNS wide, with ``env``'s values (None: unset)."""
    full_env: dict[str, str | None] = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("ROBENCH_DEBUG", None)
    return {k: v for k, v in full_env.items() if v is not None}


_zygote: Zygote | None = None


def run_cli(*args: str, env: dict[str, str | None] | None = None, timeout: float = 600, fresh: bool = False,
            cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``python -m robench ARGS`` in a process of its own, in ``cwd``, with ``env`` added to
    this process's environment (a None value unsets); COLUMNS wide so tables do not fold.

    The process is forked from one that has imported robench already (tests/forked_cli.py),
    unless ``fresh`` asks for a new interpreter, for the tests of how a command starts, or
    ``env`` changes what an interpreter reads while it starts."""
    global _zygote
    full_env = _cli_env(env)
    if not fresh:
        if _zygote is None:
            _zygote = Zygote(_cli_env(None))
        blockers = _zygote.blockers(full_env)
        if not blockers:
            return _zygote.run(list(args), full_env, cwd, timeout)
        if drifted := blockers - set(env or {}):  # not the test's choice: every later command pays
            warnings.warn(f"run_cli: {', '.join(sorted(drifted))} changed in this test process after the CLI "
                          "zygote started; add it to forked_cli._READ_LATER if no start-up reads it, or "
                          "restore it: meanwhile each command starts a fresh interpreter", stacklevel=2)
    return subprocess.run(
        [sys.executable, "-m", "robench", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=str(cwd),
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _zygote is not None:
        _zygote.close()


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A results folder outside the repository, so tests never touch leaderboards/."""
    return tmp_path / "results"


@pytest.fixture(autouse=True, scope="session")
def _runs_outside_the_checkout(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Checkpoints, records and reports of test runs that name no folder go to temp
    folders (subprocesses inherit them), never into the checkout's robench-results/."""
    os.environ["ROBENCH_RUNS"] = str(tmp_path_factory.mktemp("runs"))
    os.environ["ROBENCH_RESULTS"] = str(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="session")
def standard_digits():
    """(plan, model, test split): smallcnn after 4 epochs of standard training on digits,
    accurate and breakable. Shared: tests must leave it in eval mode, weights untouched."""
    import torch

    from robench.core.config import TrainConfig, resolve, validate
    from robench.engine.train import train
    from robench.workflows.plans import build_model, plan_run

    plan = plan_run(validate(resolve(None, {"defense": {"name": "standard"}})))
    torch.manual_seed(0)
    model = build_model(plan)
    splits = plan.dataset.load(None, 0)
    train(model, plan.defense, splits.train, plan.threat, TrainConfig(epochs=4, batch_size=64, lr=0.1),
          device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    return plan, model.eval(), splits.test
