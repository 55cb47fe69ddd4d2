"""``robench bench``: time robench's training step against the reference loops.

Registered on the main app by :mod:`robench.cli.main`, which owns exit codes and error lines.
"""
from __future__ import annotations

import platform
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    import torch

    from robench.workflows.bench import BenchRow

out = Console(highlight=False)

DEFAULT_DEFENSES = ["standard", "pgd-at", "trades", "mart", "uadat"]


# bench's options: its own, since it times one step rather than making a run (its --device
# defaults to auto, its --precision etc. set robench's side only)
_DEFENSE_OPT = typer.Option(
    None, "--defense", metavar="NAME[:PARAM=VALUE,...]",
    help="Defense to time (repeatable; default: all five built-ins); with settings, a variant of it "
    "(uadat:align_fraction=0.25), timed without a reference.",
)
_ARCH_OPT = typer.Option("preact-resnet-18", "--arch", metavar="NAME", help="Architecture, e.g. wrn-34-10 on a GPU.")
_BATCH_SIZE_OPT = typer.Option(32, "--batch-size", min=1, help="Images per step.")
_SIZE_OPT = typer.Option(32, "--size", min=4, help="Image side (3 channels).")
_DEVICE_OPT = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N.")
_REPEATS_OPT = typer.Option(3, "--repeats", min=1, help="Timed steps per variant (medians).")
_WARMUP_OPT = typer.Option(1, "--warmup", min=0, help="Untimed steps first.")
_PEAK_OPT = typer.Option(
    None, "--peak-tflops", min=0.0, help="The device's peak TFLOP/s at this precision, to print the achieved fraction."
)
_PRECISION_OPT = typer.Option(
    "fp32", "--precision", metavar="P", help="robench's side: fp32, bf16 or fp16 (the reference stays fp32)."
)
_CHANNELS_LAST_OPT = typer.Option(False, "--channels-last", help="robench's side in channels-last memory format.")
_COMPILE_OPT = typer.Option(False, "--compile", help="robench's side under torch.compile (give --warmup >= 2).")


def bench(
    defense: list[str] | None = _DEFENSE_OPT,
    arch: str = _ARCH_OPT,
    batch_size: int = _BATCH_SIZE_OPT,
    size: int = _SIZE_OPT,
    device: str = _DEVICE_OPT,
    repeats: int = _REPEATS_OPT,
    warmup: int = _WARMUP_OPT,
    peak_tflops: float | None = _PEAK_OPT,
    precision: str = _PRECISION_OPT,
    channels_last: bool = _CHANNELS_LAST_OPT,
    compile_model: bool = _COMPILE_OPT,
) -> None:
    """Time one training step of each defense against a plain reference loop.

    The reference loops (benchmarks/reference_loops.py) run in the same process, model, batch
    and device; the table gives images/s, the ratio robench/reference and achieved TFLOP/s."""
    import torch

    from robench.workflows.bench import bench as run_bench

    names = defense or DEFAULT_DEFENSES
    dev = _checked_device(names, precision, device)
    rows = run_bench(names, arch, batch_size=batch_size, size=size, device=dev,
                     repeats=repeats, warmup=warmup, peak_tflops=peak_tflops, precision=precision,
                     channels_last=channels_last, compile_model=compile_model)

    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    out.print(f"robench bench: {arch}, {size}x{size}, batch {batch_size}, {dev} ({where}), torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, median of {repeats}; robench side: {precision}"
              + (", channels-last" if channels_last else "") + (", compiled" if compile_model else ""))
    _print_rows(rows, memory=dev.type == "cuda")


def _checked_device(names: list[str], precision: str, device: str) -> torch.device:
    """The device to time on; an unknown precision, device, defense name or setting fails
    before any timing."""
    from robench.api.errors import UserError
    from robench.core.registry import get_registry
    from robench.engine.machine import resolve_device
    from robench.engine.precision import PRECISIONS
    from robench.workflows.bench import defense_variant

    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dev = resolve_device(device)
    for name in names:
        kind, params = defense_variant(name)
        get_registry("defense").create(kind, params, where="defense")
    return dev


def _print_rows(rows: list[BenchRow], *, memory: bool) -> None:
    """The timing table and how to read it; ``memory``: with each defense's peak CUDA memory."""
    table = Table(show_edge=False)
    for col in ("defense", "s/step", "images/s", "ref s/step", "ratio", "TFLOP/s", "of peak") + (("peak GB",) if memory else ()):
        table.add_column(col, justify="left" if col == "defense" else "right")
    for r in rows:
        table.add_row(
            r.defense, f"{r.seconds:.4f}", f"{r.images_per_s:.1f}",
            "-" if r.reference_seconds is None else f"{r.reference_seconds:.4f}",
            "-" if r.ratio is None else f"{r.ratio:.3f}",
            "-" if r.tflops is None else f"{r.tflops:.4f}",
            "-" if r.peak_fraction is None else f"{100 * r.peak_fraction:.1f}%",
            *((f"{r.peak_memory_gb:.1f}",) if memory and r.peak_memory_gb is not None else ()),
        )
    out.print(table)
    out.print("ratio = robench s/step / reference s/step (below 1.0: robench is faster). UAD-AT has no official "
              "code, so no reference. TFLOP/s use the per-image forward-pass counts in robench/bench.py. "
              "The reference runs with PyTorch's default TF32 and cuDNN settings, robench with its training "
              "settings" + ("; peak GB: the process's largest CUDA allocation during robench's steps." if memory else "."))
