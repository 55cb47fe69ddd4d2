"""UAD-AT's training cost relative to PGD-AT's, on the same machine, model and data.

Two measurements, both through the real plugins and, for epochs, robench's own engine:

* **epoch** (default): one training epoch of each defense with ``robench.engine.train``
  on the real digits data and the default run's settings (smallcnn, batch 64, PGD-10),
  validation off so that only training is timed. Defenses alternate, every epoch
  starts from the same weights, seed and batch order.
* **step** (``--arch``): one training step (attack, loss, backward, SGD) on a random
  batch of ``--size`` x ``--size`` colour images, for architectures too large to
  train here for a whole epoch.

It prints the median seconds of each and the ratio UAD-AT / PGD-AT; issue #6's goal is
at most 1.5. The UAD-AT settings are its defaults (M = 2 samples, p = 0.5, alignment
on); ``--set KEY=VALUE`` changes them (e.g. ``--set align=false``).

    python benchmarks/uadat_cost.py                           # digits epochs, about a minute
    python benchmarks/uadat_cost.py --arch preact-resnet-18   # 32x32 steps, batch 64
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Any

import torch
from torch import nn

from robench.api.model import NormalizedClassifier
from robench.api.threat import ThreatModel
from robench.core.config import parse_set, resolve, validate
from robench.core.datasets import load_data
from robench.core.paths import data_root
from robench.core.registry import get_registry
from robench.core.seeding import make_generator, seed_everything
from robench.engine.train import make_optimizer, train
from robench.workflows.plans import build_model, plan_run

DEFENSES = ("pgd-at", "uadat")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default=None, help="time single steps of this architecture instead of digits epochs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--size", type=int, default=32, help="image side for --arch (3 channels)")
    p.add_argument("--repeats", type=int, default=5, help="timed epochs or steps per defense (after one warm-up)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="UAD-AT hyperparameter, e.g. samples=1")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def time_epochs(args: argparse.Namespace, uadat: dict[str, Any]) -> dict[str, list[float]]:
    plans = {
        d: plan_run(validate(resolve(flags={"defense": {"name": d, **(uadat if d == "uadat" else {})},
                                            "train": {"epochs": 1, "batch_size": args.batch_size},
                                            "seed": args.seed, "device": "cpu"})))
        for d in DEFENSES
    }
    first = plans[DEFENSES[0]]
    splits, _ = load_data(first.dataset, first.names["data"], data_root(None))
    seed_everything(args.seed)
    model = build_model(first)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    times: dict[str, list[float]] = {d: [] for d in DEFENSES}
    for i in range(args.repeats + 1):
        for name, plan in plans.items():
            model.load_state_dict(start)
            gen = make_generator(args.seed)
            seed_everything(args.seed)
            result = train(model, plan.defense, splits.train, plan.threat, plan.config.train,
                           device=torch.device("cpu"), generator=gen,
                           augment=plan.dataset.augment, seed=args.seed)
            if i:
                times[name].append(result.history[-1].seconds)
    return times


def time_steps(args: argparse.Namespace, uadat: dict[str, Any]) -> dict[str, list[float]]:
    torch.manual_seed(args.seed)
    net = get_registry("architecture").create(args.arch, {}).build(10, (3, args.size, args.size))
    model: nn.Module = NormalizedClassifier(net, (0.5,) * 3, (0.25,) * 3).train()
    x = torch.rand(args.batch_size, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch_size,))
    threat = ThreatModel("Linf", "8/255")
    defenses = {d: get_registry("defense").create(d, uadat if d == "uadat" else {}) for d in DEFENSES}
    opt = make_optimizer(model, validate(resolve()).train)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    times: dict[str, list[float]] = {d: [] for d in DEFENSES}
    for i in range(args.repeats + 1):
        for name, defense in defenses.items():
            model.load_state_dict(start)
            torch.manual_seed(args.seed)
            began = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            defense.loss(model, x, y, threat).loss.backward()
            opt.step()
            if i:
                times[name].append(time.perf_counter() - began)
    return times


def main() -> int:
    args = parse_args()
    uadat = parse_set(args.overrides)
    times = time_steps(args, uadat) if args.arch else time_epochs(args, uadat)
    what = (f"{args.arch}, {args.size}x{args.size}, batch {args.batch_size}, s/step" if args.arch
            else f"digits, smallcnn, batch {args.batch_size}, s/epoch (training only)")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {what}; {args.repeats} timed each; UAD-AT settings {uadat or 'defaults'}")
    medians = {d: statistics.median(t) for d, t in times.items()}
    for d in DEFENSES:
        print(f"{d:<8} median {medians[d]:8.3f}   all {' '.join(f'{t:.3f}' for t in times[d])}")
    print(f"ratio uadat / pgd-at: {medians['uadat'] / medians['pgd-at']:.2f}   (goal: at most 1.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
