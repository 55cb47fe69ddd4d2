"""``--nproc N``: the same command again under torchrun, one process per device."""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import typer
from rich.text import Text

from robench.cli.common import err, out

#: environment variable with the command line of a process that ``--nproc`` starts
TORCHRUN_ARGV = "ROBENCH_TORCHRUN_ARGV"


NPROC_OPT = typer.Option(
    None, "--nproc", metavar="N", min=1,
    help="Train on N processes (one per GPU; gloo on CPU) through torchrun; train.batch_size stays the global batch.",
)


def _wait_forwarding_sigterm(child: Any) -> int:
    """Wait for torchrun; a SIGTERM to this process (``kill``, a scheduler) goes on to it.

    torchrun passes it to every rank, which stop at the next agreed step with a
    mid-epoch ``last.pt``. SIGINT is not passed on: Ctrl-C reaches torchrun from the
    terminal already, and a second one would cut the ranks' checkpoint short."""
    import signal

    handlers = {signal.SIGTERM: lambda signum, frame: child.send_signal(signum),
                signal.SIGINT: lambda signum, frame: None}
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        return int(child.wait())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def launch_torchrun(nproc: int | None, device: str, batch_size: int) -> None:
    """Start this very command under torchrun with ``nproc`` processes, then exit with its code.

    Does nothing when ``nproc`` is 1 or unset, or inside torchrun already (where the
    number of processes must then agree).
    """
    import subprocess

    from robench.api.errors import UserError
    from robench.engine.distributed import world_from_env

    if "RANK" in os.environ:  # a torchrun process already
        world = world_from_env()
        if nproc is not None and nproc != world.size:
            raise UserError(f"--nproc {nproc} but torchrun started {world.size} process(es)")
        return
    if nproc is None or nproc == 1:
        return
    if batch_size < nproc:
        raise UserError(f"train.batch_size {batch_size} is the global batch; it must be at least --nproc {nproc}")
    if device.startswith("cuda"):
        import torch

        if nproc > torch.cuda.device_count():
            raise UserError(f"--nproc {nproc}: only {torch.cuda.device_count()} CUDA device(s) here")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # the arguments travel in the environment: torchrun's own parser would claim some (--nproc)
    env[TORCHRUN_ARGV] = json.dumps(sys.argv[1:])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "robench"]
    out.print(Text(f"torchrun: {nproc} processes"), soft_wrap=True)
    code = _wait_forwarding_sigterm(subprocess.Popen(cmd, env=env))
    if code != 0:
        err.print(Text(f"error: a torchrun process failed (exit code {code}); its message is above"), soft_wrap=True)
    raise typer.Exit(code if code in (0, 2) else 1)
