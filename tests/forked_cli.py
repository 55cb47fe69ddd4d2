"""The robench command line in processes forked from one that has imported it already.

A fresh ``python -m robench`` spends two to four seconds of CPU importing torch, the CLI
and scikit-learn (the digits data) before it reads its first argument, and a run one
more importing TorchDynamo when it makes its optimizer. The suite runs
a few hundred commands, most of them done within seconds after that: a bad input, a
listing, a board, a one-epoch run. Here a *zygote*, a Python process that has made those
imports and nothing else (no torch operation, no plugin registry, no CUDA), forks one
child per command. The child takes the command's environment, working folder,
``sys.argv`` and ``sys.path`` as ``python -m robench`` would have them, writes to its
own output files, runs ``robench.cli.main.main()`` exactly as ``robench/__main__.py``
does, and ends through the interpreter's normal shutdown. Every command still runs in
a process of its own, with its real exit code, files and signals; only the interpreter's
start and the imports are shared.

What this leaves out is that start. ``conftest.run_cli(..., fresh=True)`` runs a fresh
interpreter, for the tests of the start itself (the console script, ``python -m
robench``, the golden runs, a one-line error from a fresh process). So does a command
whose environment changes what a process reads while it starts: thread counts, the C
library, Python's own variables other than ``PYTHONPATH``.

Run as a script, this file is the zygote: it reads one JSON request a line on stdin and
answers on stdout, first ``{"pid": N}`` when the child started, then
``{"returncode": N}`` when it ended.
"""
from __future__ import annotations

import gc
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: environment variables a command may set or change without a fresh interpreter: the
#: ones read while a command runs, none while the zygote imports. Some are set by robench
#: or torch themselves in a process that trains (the engine's CUBLAS_WORKSPACE_CONFIG,
#: inductor's _TORCHINDUCTOR_*), so a test that trains in-process leaves them behind.
_READ_LATER = re.compile(
    r"ROBENCH_\w+|PYTEST_\w+|XDG_\w+|_?TORCHINDUCTOR_\w+|WANDB_\w+|MLFLOW_\w+|CUBLAS_WORKSPACE_CONFIG"
    r"|PYTHONPATH|COLUMNS|PYTHONUNBUFFERED|HOME|PATH"
)


# ------------------------------------------------------------------ the zygote itself
def _preload() -> None:
    """What nearly every command imports first; nothing here may start a computation."""
    import sklearn.datasets  # the digits data
    import sklearn.model_selection  # noqa: F401  (its stratified split)
    import torch._dynamo  # noqa: F401  (imported by every torch optimizer a run makes: a second)

    import robench.cli.main  # noqa: F401  (and with it torch, typer, rich)


def _serve() -> dict[str, Any] | None:
    """Fork a child per request; in the parent, wait for it and say how it ended.
    Returns the request in the child, None in the parent when stdin closes."""
    for line in sys.stdin:
        request = json.loads(line)
        gc.freeze()  # the imports' objects stay shared: the child's collections skip them
        pid = os.fork()
        if pid == 0:
            return request
        os.write(1, (json.dumps({"pid": pid}) + "\n").encode())
        _, status = os.waitpid(pid, 0)
        os.write(1, (json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n").encode())
    return None


def _become(request: dict[str, Any]) -> None:
    """Give this child the command's files, environment, folder, argv and path."""
    stdin = os.open(os.devnull, os.O_RDONLY)
    stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    stderr = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(os.devnull)  # the zygote's may hold its next request
    before = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    added = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in before]
    sys.path[:1] = [os.getcwd(), *added]  # `python -m` puts the working folder first
    import importlib

    importlib.invalidate_caches()
    sys.argv = [str(REPO / "robench" / "__main__.py"), *request["argv"]]


# ------------------------------------------------------------------ the tests' side
class Zygote:
    """A zygote process and the lock that lets one command at a time through it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = dict(env)
        self.lock = threading.Lock()
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=str(REPO), env=self.env, bufsize=0)
        self.pending = b""

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)

    def blockers(self, env: dict[str, str]) -> set[str]:
        """The variables in which ``env`` differs from the zygote's where a forked child
        cannot follow (none: the command can be forked)."""
        changed = {k for k in env.keys() | self.env.keys() if env.get(k) != self.env.get(k)}
        return {k for k in changed if not _READ_LATER.fullmatch(k)}

    def _answer(self, timeout: float | None) -> dict[str, Any] | None:
        """The zygote's next line, or None when ``timeout`` seconds pass first."""
        assert self.proc.stdout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.pending:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"the robench zygote ended (exit {self.proc.wait()})")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def run(self, args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
        """``python -m robench ARGS`` in a forked child; like ``subprocess.run`` with
        captured text output, it raises ``TimeoutExpired`` after killing a late child."""
        command = [sys.executable, "-m", "robench", *args]
        with tempfile.TemporaryDirectory(prefix="robench-cli-") as folder, self.lock:
            stdout, stderr = Path(folder) / "stdout", Path(folder) / "stderr"
            request = {"argv": args, "env": env, "cwd": str(cwd), "stdout": str(stdout), "stderr": str(stderr)}
            assert self.proc.stdin
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            started = self._answer(60)
            if started is None:
                raise RuntimeError("the robench zygote did not start a child within 60 s")
            ended = self._answer(timeout)
            if ended is None:
                os.kill(started["pid"], signal.SIGKILL)
                self._answer(None)
            texts = [p.read_text(errors="replace") if p.exists() else "" for p in (stdout, stderr)]
        if ended is None:
            raise subprocess.TimeoutExpired(command, timeout, texts[0], texts[1])
        return subprocess.CompletedProcess(command, ended["returncode"], texts[0], texts[1])


if __name__ == "__main__":
    sys.path[0] = str(REPO)  # robench from this checkout, as `python -m robench` run here finds it
    _preload()
    _request = _serve()
    if _request is not None:  # a child: the command, as robench/__main__.py runs it
        _become(_request)
        from robench.cli.main import main

        raise SystemExit(main())
