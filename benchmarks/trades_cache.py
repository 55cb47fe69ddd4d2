"""TRADES training step: robench's cached clean target against the official recomputation.

The official TRADES attack recomputes softmax(f(x)) at every step; robench computes it
once per batch (``cache_clean``). Both run here in one process on the same model,
batch and seed, interleaved, through the real ``trades`` plugin (``cache_clean`` true
and false): the script checks the two steps give bit-identical losses and weight
gradients, counts the forward passes (a forward hook), and prints median seconds per
step and the ratio cached / official. Expected from counting: an attack of K steps
does 1 + K forward passes instead of 2K, and a whole step costs about 27 instead of
39 forward-pass equivalents at K = 10 (a third less).

    python benchmarks/trades_cache.py                       # PreAct-ResNet-18, 32x32, batch 64
    python benchmarks/trades_cache.py --arch smallcnn --repeats 9
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from robench.api.model import NormalizedClassifier
from robench.api.threat import ThreatModel
from robench.core.registry import get_registry


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="preact-resnet-18", help="robench architecture plugin")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--size", type=int, default=32, help="image side (3 channels)")
    p.add_argument("--steps", type=int, default=10, help="TRADES attack steps")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per variant (after one warm-up)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    torch.manual_seed(args.seed)
    net = get_registry("architecture").create(args.arch, {}).build(10, (3, args.size, args.size))
    model = NormalizedClassifier(net, (0.5,) * 3, (0.25,) * 3).train()
    x = torch.rand(args.batch_size, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch_size,))
    threat = ThreatModel("Linf", "0.031")
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    variants = {
        "robench (cached)": get_registry("defense").create("trades", {"steps": args.steps, "cache_clean": True}),
        "official (recompute)": get_registry("defense").create("trades", {"steps": args.steps, "cache_clean": False}),
    }

    def step(defense) -> tuple[float, torch.Tensor, list[torch.Tensor], int]:
        torch.manual_seed(args.seed)  # same Gaussian start for both
        model.zero_grad(set_to_none=True)
        calls[0] = 0
        start = time.perf_counter()
        out = defense.loss(model, x, y, threat)
        out.loss.backward()
        took = time.perf_counter() - start
        return took, out.loss.detach(), [p.grad.clone() for p in model.parameters()], calls[0]

    state = {k: v.clone() for k, v in model.state_dict().items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    results = {}
    for i in range(args.repeats + 1):
        for name, defense in variants.items():
            model.load_state_dict(state)  # BN running stats identical for every step
            took, loss, grads, forwards = step(defense)
            if i:
                times[name].append(took)
            results[name] = (loss, grads, forwards)
    (la, ga, fa), (lb, gb, fb) = results.values()
    identical = torch.equal(la, lb) and all(torch.equal(a, b) for a, b in zip(ga, gb))

    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.arch}, batch {args.batch_size}, "
          f"{args.size}x{args.size}, {args.steps} attack steps, {args.repeats} timed steps each")
    print(f"{'variant':<22} {'median s/step':>14} {'forward calls':>14}")
    for name, (_, _, forwards) in results.items():
        print(f"{name:<22} {statistics.median(times[name]):>14.3f} {forwards:>14d}")
    ratio = statistics.median(times["robench (cached)"]) / statistics.median(times["official (recompute)"])
    print(f"ratio cached / official: {ratio:.3f}   identical loss and gradients: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
