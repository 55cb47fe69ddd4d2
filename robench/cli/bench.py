"""``robench bench``: time robench's training step against the reference loops.

Registered on the main app by :mod:`robench.cli.main`, which owns exit codes and error lines.
"""
from __future__ import annotations

import platform

import typer
from rich.console import Console
from rich.table import Table

out = Console(highlight=False)

DEFAULT_DEFENSES = ["standard", "pgd-at", "trades", "mart", "uadat"]


def bench(
    defense: list[str] | None = typer.Option(None, "--defense", metavar="NAME[:PARAM=VALUE,...]",
        help="Defense to time (repeatable; default: all five built-ins); with settings, a variant of it "
        "(uadat:align_fraction=0.25), timed without a reference."),
    arch: str = typer.Option("preact-resnet-18", "--arch", metavar="NAME", help="Architecture, e.g. wrn-34-10 on a GPU."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per step."),
    size: int = typer.Option(32, "--size", min=4, help="Image side (3 channels)."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Timed steps per variant (medians)."),
    warmup: int = typer.Option(1, "--warmup", min=0, help="Untimed steps first."),
    peak_tflops: float | None = typer.Option(None, "--peak-tflops", min=0.0,
        help="The device's peak TFLOP/s at this precision, to print the achieved fraction."),
    precision: str = typer.Option("fp32", "--precision", metavar="P",
        help="robench's side: fp32, bf16 or fp16 (the reference stays fp32)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="robench's side in channels-last memory format."),
    compile_model: bool = typer.Option(False, "--compile", help="robench's side under torch.compile (give --warmup >= 2)."),
) -> None:
    """Time one training step of each defense against a plain reference loop.

    The reference loops (benchmarks/reference_loops.py) run in the same process, model, batch
    and device; the table gives images/s, the ratio robench/reference and achieved TFLOP/s."""
    import torch

    from robench.api.errors import UserError
    from robench.core.registry import get_registry
    from robench.engine.machine import resolve_device
    from robench.engine.precision import PRECISIONS
    from robench.workflows.bench import bench as run_bench
    from robench.workflows.bench import defense_variant

    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dev = resolve_device(device)
    names = defense or DEFAULT_DEFENSES
    for name in names:  # unknown names and settings fail before any timing
        kind, params = defense_variant(name)
        get_registry("defense").create(kind, params, where="defense")
    rows = run_bench(names, arch, batch_size=batch_size, size=size, device=dev,
                     repeats=repeats, warmup=warmup, peak_tflops=peak_tflops, precision=precision,
                     channels_last=channels_last, compile_model=compile_model)

    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    out.print(f"robench bench: {arch}, {size}x{size}, batch {batch_size}, {dev} ({where}), torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, median of {repeats}; robench side: {precision}"
              + (", channels-last" if channels_last else "") + (", compiled" if compile_model else ""))
    table = Table(show_edge=False)
    memory = dev.type == "cuda"
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
