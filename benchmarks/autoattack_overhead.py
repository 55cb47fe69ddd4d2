"""AutoAttack through robench vs. ``pyautoattack`` called directly: time and agreement.

Why this exists
---------------
robench evaluates AutoAttack through its ``autoattack`` attack plugin, which wraps the
PyPI package ``pyautoattack`` (clean pass first, AutoAttack on the clean-correct points
only, model in eval mode with frozen weights, warnings collected, final projection
into the eps-ball). The claim to check is that this wrapping costs nothing: robench's
path should be no slower than calling ``pyautoattack`` yourself (time ratio
robench / direct <= 1.0), and it must give exactly the same robust accuracy and the
same per-example robust flags on the same inputs and seed.

What it does
------------
In one process: trains robench's digits model (smallcnn, PGD-AT, 20 epochs (the default has 15),
about 35 s on a 2-core CPU) or loads ``--checkpoint``, then times three variants on the
same test points with the same AutoAttack seed and batch size, interleaved
(robench, direct, direct-frozen; the order alternates from one repeat to the next):

* ``robench``        ``robench.evaluation.sequential.evaluate`` with the ``autoattack`` plugin
* ``direct``         ``pyautoattack.AutoAttack(...).run_standard_evaluation`` after
                     ``model.eval()`` only, as AutoAttack's README shows
* ``direct-frozen``  the same with ``model.requires_grad_(False)`` as well (no weight
                     gradients in FAB's ``backward``), restored afterwards

Before each direct run the module-global counter of pyautoattack's dynamic-defence
check (``pyautoattack.checks.funcs``) is reset, as robench does before each of its
runs, so every variant starts from the same state.

It prints the machine (with the load average: other processes on a small machine
skew the timings), a table (variant, median wall seconds, median process CPU seconds,
robust accuracy, flags identical to robench, ratio robench / variant, and the model
forward calls and rows each variant made: the work done, free of timing noise), and
exits with status 1 when any variant's robust accuracy or per-example robust flags
differ from robench's.

How to run
----------
    python benchmarks/autoattack_overhead.py                 # full: 360 points, ~6 min + training
    python benchmarks/autoattack_overhead.py --n-eval 40     # quick check
    python benchmarks/autoattack_overhead.py --repeats 3     # median of 3 per variant
    python benchmarks/autoattack_overhead.py --version custom --attacks apgd-ce apgd-t
    python benchmarks/autoattack_overhead.py --checkpoint runs/<run-id>/last.pt
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from robench.api import TensorSplit
from robench.core.config import resolve, resolve_over, validate
from robench.core.datasets import load_data
from robench.core.paths import data_root
from robench.core.registry import get_registry
from robench.core.seeding import make_generator, seed_everything
from robench.engine.train import train
from robench.evaluation.sequential import evaluate, percent, subset_indices
from robench.workflows.plans import ProtocolPlan, build_model, plan_protocol, plan_run

VARIANTS = ("robench", "direct", "direct-frozen")
AA_LOGGER = "auto-attack"


class _Collect(logging.Handler):
    """AutoAttack's warnings (sanity checks) during one direct run."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = " ".join(record.getMessage().split())
        if message not in self.messages:
            self.messages.append(message)


@dataclass
class Measured:
    seconds: list[float] = field(default_factory=list)
    #: CPU time of the process (all threads): separates work done from waiting
    cpu_seconds: list[float] = field(default_factory=list)
    #: model forward calls and rows through the model per run: the work, independent of timing noise
    calls: list[tuple[int, int]] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    flags: list[Tensor] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time robench's AutoAttack path against pyautoattack called directly.",
        epilog="See the module docstring (benchmarks/autoattack_overhead.py) for details.",
    )
    p.add_argument("--checkpoint", type=Path,
        help="a robench checkpoint (best.pt or last.pt); default: train the default digits model here")
    p.add_argument("--n-eval", type=int, default=None, metavar="N",
                   help="evaluate robench's fixed subset of N test points (default: all)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per variant, interleaved with alternating order; medians are reported (default 1)")
    p.add_argument("--batch-size", type=int, default=500,
                   help="AutoAttack's internal batch size, the same for every variant (default 500, robench's)")
    p.add_argument("--version", choices=("standard", "plus", "rand", "custom"), default="standard",
                   help="AutoAttack version (default standard)")
    p.add_argument("--attacks", nargs="+", default=[], metavar="NAME",
                   help="with --version custom: the attacks, e.g. apgd-ce apgd-t")
    p.add_argument("--seed", type=int, default=0, help="training and AutoAttack seed (default 0)")
    p.add_argument("--epochs", type=int, default=None, help="override the training epochs (quick checks)")
    p.add_argument("--verbose", action="store_true", help="show pyautoattack's log on stderr")
    args = p.parse_args(argv)
    if (args.version == "custom") != bool(args.attacks):
        p.error("give --attacks exactly when --version is custom")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def prepare(args: argparse.Namespace) -> tuple[ProtocolPlan, nn.Module, TensorSplit, str]:
    """The model (trained here the way ``robench run`` does, or from a checkpoint)."""
    if args.checkpoint is not None:
        from robench.engine.checkpoint import load_checkpoint

        ckpt = load_checkpoint(args.checkpoint.expanduser().resolve())
        base = {k: ckpt.config[k] for k in ("seed", "data", "arch", "defense", "threat", "train") if k in ckpt.config}
        raw = resolve_over(base, None, {"device": "cpu", "attacks": ["autoattack"]}, dataset_preset=False)
        plan = plan_protocol(validate(raw))
        model = build_model(plan)
        model.load_state_dict(ckpt.state_dict)
        splits, _ = load_data(plan.dataset, plan.names["data"], data_root(plan.config.data_root))
        return plan, model, splits.test, f"checkpoint {args.checkpoint} (run {ckpt.run_id})"
    flags: dict[str, object] = {"defense": {"name": "pgd-at"}, "device": "cpu", "seed": args.seed}
    flags["train"] = {"epochs": 20 if args.epochs is None else args.epochs}  # as measured in docs/performance.md
    plan = plan_run(validate(resolve(None, flags)))
    cfg = plan.config
    seed_everything(cfg.seed)
    model = build_model(plan)
    splits, _ = load_data(plan.dataset, plan.names["data"], data_root(cfg.data_root))
    gen = make_generator(cfg.seed)
    started = time.perf_counter()
    train(model, plan.defense, splits.train, plan.threat, cfg.train, device=torch.device("cpu"),
          generator=gen, augment=plan.dataset.augment)
    took = time.perf_counter() - started
    what = (f"trained here: {plan.names['arch']} on {plan.names['data']}, {plan.names['defense']}, "
            f"{cfg.train.epochs} epochs, seed {cfg.seed} ({took:.1f} s)")
    return plan, model, splits.test, what


def reset_dynamic_check() -> None:
    """pyautoattack 0.2.0's never-reset global counter; robench zeroes it before each run."""
    from pyautoattack import checks

    for key in checks.funcs:
        checks.funcs[key] = 0


def run_robench(model: nn.Module, test: TensorSplit, plan: ProtocolPlan, args: argparse.Namespace,
                out: Measured) -> None:
    params: dict[str, object] = {"seed": args.seed, "batch_size": args.batch_size, "version": args.version}
    if args.version == "custom":
        params["attacks"] = list(args.attacks)
    attack = get_registry("attack").create("autoattack", params)
    started, cpu = time.perf_counter(), time.process_time()
    result = evaluate(model, test, [attack], plan.threat, batch_size=512, device=torch.device("cpu"),
                      seed=args.seed, n_eval=args.n_eval)
    out.seconds.append(time.perf_counter() - started)
    out.cpu_seconds.append(time.process_time() - cpu)
    assert result.robust is not None
    out.accuracy.append(result.accuracy[attack.label()])
    out.flags.append(result.robust.clone())
    out.warnings.extend(m for m in result.flags if m not in out.warnings)


def run_direct(model: nn.Module, x: Tensor, y: Tensor, plan: ProtocolPlan, args: argparse.Namespace,
               out: Measured, *, frozen: bool) -> None:
    from pyautoattack import AutoAttack

    collect = _Collect()
    logger = logging.getLogger(AA_LOGGER)
    logger.addHandler(collect)
    was_training = model.training
    grad_flags = [p.requires_grad for p in model.parameters()]
    reset_dynamic_check()
    try:
        started, cpu = time.perf_counter(), time.process_time()
        model.eval()
        if frozen:
            model.requires_grad_(False)
        adversary = AutoAttack(model, eps=plan.threat.value, norm=plan.threat.norm, seed=args.seed,
                               version=args.version, attacks=list(args.attacks) or None, device="cpu")
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=args.batch_size)
        with torch.no_grad():
            robust = (model(x_adv).argmax(1) == y).cpu()
        out.seconds.append(time.perf_counter() - started)
        out.cpu_seconds.append(time.process_time() - cpu)
    finally:
        logger.removeHandler(collect)
        for p, flag in zip(model.parameters(), grad_flags):
            p.requires_grad_(flag)
        model.zero_grad(set_to_none=True)  # FAB's backward left weight gradients behind
        model.train(was_training)
    out.accuracy.append(percent(robust))
    out.flags.append(robust)
    out.warnings.extend(f"{AA_LOGGER}: {m}" for m in collect.messages if f"{AA_LOGGER}: {m}" not in out.warnings)


def warm_up(model: nn.Module, x: Tensor, y: Tensor) -> None:
    """One forward/backward pass, so no variant pays for first-call setup."""
    was_training = model.training
    model.eval()
    xw = x[:64].clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(xw), y[:64])
    torch.autograd.grad(loss, xw)
    model.train(was_training)


def machine() -> list[str]:
    return [
        f"python   {platform.python_version()} on {platform.platform()}",
        f"cpu      {platform.processor() or platform.machine()} ({cpu_model()})",
        f"torch    {torch.__version__}, {torch.get_num_threads()} threads (torch.get_num_threads, default)",
        f"cores    {os.cpu_count()}; {load_average()}",
    ]


def cpu_model() -> str:
    """platform.processor() is often empty on Linux; /proc/cpuinfo names the CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "model unknown"


def load_average() -> str:
    """Other processes on the machine skew the timings; say how busy it was."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average unavailable"
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from importlib.metadata import version as dist_version

    import pyautoattack  # imported before any timing: no variant pays for it

    logger = logging.getLogger(AA_LOGGER)
    if args.verbose:
        logger.setLevel(logging.DEBUG)
        logger.addHandler(logging.StreamHandler(sys.stderr))
    else:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False  # warnings are collected per variant and printed below

    print("AutoAttack overhead: robench's path vs pyautoattack direct")
    for line in machine():
        print(line)
    import robench

    print(f"robench  {robench.__version__}; pyautoattack {dist_version('pyautoattack')} ({pyautoattack.__file__})")
    plan, model, test, what = prepare(args)
    print(f"model    {what}")
    idx = subset_indices(len(test), args.n_eval)
    x, y = test.images(idx), test.y[idx]
    suite = args.version if args.version != "custom" else "custom: " + " ".join(args.attacks)
    print(f"eval     {len(idx)} of {len(test)} test points, threat {plan.threat}, AutoAttack {suite}, "
          f"seed {args.seed}, batch size {args.batch_size}, repeats {args.repeats}")
    with torch.no_grad():
        model.eval()
        clean = percent((model(x).argmax(1) == y).cpu())
        model.train()
    print(f"clean    {clean:.2f}% ({int(round(clean * len(idx) / 100))}/{len(idx)})")
    warm_up(model, x, y)

    counter = [0, 0]

    def count(_module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
        counter[0] += 1
        counter[1] += int(inputs[0].shape[0])

    model.register_forward_hook(count)  # every variant calls this same module
    measured = {name: Measured() for name in VARIANTS}
    for r in range(args.repeats):
        order = VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS))
        for name in order:
            counter[:] = [0, 0]
            if name == "robench":
                run_robench(model, test, plan, args, measured[name])
            else:
                run_direct(model, x, y, plan, args, measured[name], frozen=name == "direct-frozen")
            m = measured[name]
            m.calls.append((counter[0], counter[1]))
            print(f"  repeat {r + 1}/{args.repeats}  {name:<14} {m.seconds[-1]:8.2f} s  cpu {m.cpu_seconds[-1]:8.2f} s  "
                  f"robust {m.accuracy[-1]:.2f}%  forward calls {counter[0]} ({counter[1]} rows)  "
                  f"({load_average()})", flush=True)

    ref = measured["robench"]
    ref_time = statistics.median(ref.seconds)
    ref_flags = ref.flags[0]
    ok = True
    print()
    print(f"{'variant':<14} {'seconds':>9} {'cpu s':>9} {'robust acc':>11} {'flags = robench':>16} "
          f"{'robench/variant':>16} {'forward calls (rows)':>21}")
    for name in VARIANTS:
        m = measured[name]
        secs = statistics.median(m.seconds)
        same_flags = all(bool(torch.equal(f, ref_flags)) for f in m.flags)
        same_acc = all(a == ref.accuracy[0] for a in m.accuracy)
        ok = ok and same_flags and same_acc
        accs = sorted(set(m.accuracy))
        acc_text = "/".join(f"{a:.2f}%" for a in accs)
        cpu = statistics.median(m.cpu_seconds)
        calls = "/".join(sorted({f"{c} ({r})" for c, r in m.calls}))
        print(f"{name:<14} {secs:9.2f} {cpu:9.2f} {acc_text:>11} {'yes' if same_flags else 'no':>16} "
              f"{ref_time / secs:16.3f} {calls:>21}")
    for name in VARIANTS:
        m = measured[name]
        if len(m.seconds) > 1:
            print(f"  {name}: all runs {', '.join(f'{s:.2f}' for s in m.seconds)} s")
        differ = [int(i) for i in (m.flags[0] != ref_flags).nonzero().flatten()] if m.flags[0].shape == ref_flags.shape else []
        if differ:
            print(f"  {name}: flags differ from robench at test indices {[int(idx[i]) for i in differ]}")
        for message in m.warnings:
            print(f"  {name} warning: {message}")
    direct = statistics.median(measured["direct"].seconds)
    frozen = statistics.median(measured["direct-frozen"].seconds)
    print()
    print(f"ratio robench/direct = {ref_time / direct:.3f}; robench/direct-frozen = {ref_time / frozen:.3f} "
          f"(goal: <= 1.0)")
    print(f"after: {load_average()}")
    print(f"accuracies and per-example flags agree: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
