"""How often UAD-AT's refined reference falls back for lack of peers.

For a clean example the model misclassifies, UAD-AT builds its alignment reference from
the correctly classified examples of the same class in the batch (its peers). With none,
it falls back to a label-smoothed one-hot, and the refinement the method describes does
not happen for that example. Two measurements:

* **simulated**: the share of misclassified examples with no peer in a batch of B
  examples with balanced random labels over K classes and clean training accuracy a,
  by Monte Carlo (20,000 batches) next to the closed form (1 - a/K)^(B-1): a peer is
  another example that has the same class and is classified correctly.
* **measured**: real UAD-AT training through robench's engine, counting in every batch
  the misclassified clean examples and those that fell back, per epoch: digits with the
  default run's settings, and Fashion-MNIST (trades-smallcnn) on a fixed training subset.

    python benchmarks/uadat_peers.py                       # simulation and digits
    python benchmarks/uadat_peers.py --fashion-mnist 10000 # and 2 epochs on 10,000 F-MNIST images
"""
from __future__ import annotations

import argparse
import platform
from typing import Any

import torch

import robench_plugins.defenses.uadat as uadat_module
from robench.api.contracts import TensorSplit
from robench.core.config import resolve, validate
from robench.core.datasets import load_data
from robench.core.paths import data_root
from robench.core.seeding import make_generator, seed_everything
from robench.engine.train import train
from robench.workflows.plans import build_model, plan_run


def simulate(batch: int, classes: int, accuracy: float, trials: int = 20_000, seed: int = 0, memory: int = 0) -> float:
    """Monte Carlo share of the batch's misclassified examples that have no correct
    same-class peer, in the batch or among ``memory`` banked earlier examples (labelled
    and classified alike)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (trials, batch + memory), generator=g)
    correct = torch.rand(trials, batch + memory, generator=g) < accuracy
    per_class = torch.zeros(trials, classes).scatter_add_(1, y, correct.float())  # correct examples per class
    peers = per_class.gather(1, y[:, :batch])  # a misclassified example is never its own peer
    wrong = ~correct[:, :batch]
    return float((wrong & (peers == 0)).sum() / wrong.sum())


class Counter:
    """Wraps the reference function of UAD-AT and counts what it saw in every batch."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int, int]] = []  # examples, misclassified, fell back
        self._original = uadat_module._reference

    def per_epoch(self, epochs: int) -> dict[int, dict[str, int]]:
        per = len(self.batches) // epochs
        assert per * epochs == len(self.batches), "every epoch has the same number of batches"
        return {e: {key: sum(b[i] for b in self.batches[e * per:(e + 1) * per])
                    for i, key in enumerate(("examples", "wrong", "fallback"))} for e in range(epochs)}

    def __enter__(self) -> Counter:
        def counting(probs: torch.Tensor, correct: torch.Tensor, y: torch.Tensor, stats: torch.Tensor,
                     peers: tuple[torch.Tensor, torch.Tensor, torch.Tensor], width: float,
                     smoothing: float) -> torch.Tensor:
            has_peer = peers[2].any(1)  # in the batch, or in the bank of earlier batches
            self.batches.append((len(y), int((~correct).sum()), int((~correct & ~has_peer).sum())))
            return self._original(probs, correct, y, stats, peers, width, smoothing)

        uadat_module._reference = counting
        return self

    def __exit__(self, *exc: object) -> None:
        uadat_module._reference = self._original


def measure(data: dict[str, Any], epochs: int, subset: int | None, batch_size: int,
            memory: int = 0) -> dict[int, dict[str, int]]:
    flags = {"defense": {"name": "uadat", "memory": memory}, "data": data, "seed": 0, "device": "cpu",
             "train": {"epochs": epochs, **({"batch_size": batch_size} if batch_size else {})}}
    if data["name"] != "digits":
        flags["arch"] = {"name": "trades-smallcnn"}
    plan = plan_run(validate(resolve(flags=flags)))
    splits, _ = load_data(plan.dataset, plan.names["data"], data_root(None))
    train_split = splits.train
    if subset:
        order = torch.randperm(len(train_split), generator=torch.Generator().manual_seed(0))[:subset]
        train_split = TensorSplit(train_split.x[order], train_split.y[order])
    seed_everything(0)
    model = build_model(plan)
    with Counter() as counter:
        train(model, plan.defense, train_split, plan.threat, plan.config.train, device=torch.device("cpu"),
              generator=make_generator(0), augment=plan.dataset.augment, seed=0)
    return counter.per_epoch(epochs)


def report(name: str, counts: dict[int, dict[str, int]]) -> None:
    print(f"\n{name}: per epoch, clean misclassified share of the batch and the share of those that fell back")
    print("| epoch | examples | misclassified | fell back (of misclassified) | fell back (of all) |")
    print("|---:|---:|---:|---:|---:|")
    for epoch, c in sorted(counts.items()):
        wrong = c["wrong"] or 1
        print(f"| {epoch + 1} | {c['examples']} | {100 * c['wrong'] / c['examples']:.1f}% | "
              f"{100 * c['fallback'] / wrong:.2f}% | {100 * c['fallback'] / c['examples']:.2f}% |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fashion-mnist", type=int, default=0, metavar="N", help="also measure on N F-MNIST training images")
    p.add_argument("--epochs", type=int, default=0, help="digits epochs (default: the default run's)")
    p.add_argument("--memory", type=int, default=1024, metavar="Q",
                   help="UAD-AT's bank of peers from earlier batches (defense.memory) beside none")
    args = p.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("\nsimulated: share of misclassified examples with no correct same-class peer in the batch")
    q = args.memory
    print("| batch | classes | clean accuracy | Monte Carlo | (1 - a/K)^(B-1) | with the bank, Monte Carlo |")
    print("|---:|---:|---:|---:|---:|---:|")
    for batch, classes in ((64, 10), (128, 10), (128, 100), (128, 200)):
        for accuracy in (0.5, 0.7, 0.9):
            closed = (1 - accuracy / classes) ** (batch - 1)
            banked = simulate(batch, classes, accuracy, memory=q) if q else float("nan")
            print(f"| {batch} | {classes} | {accuracy:.1f} | {100 * simulate(batch, classes, accuracy):.2f}% | "
                  f"{100 * closed:.2f}% | {100 * banked:.2f}% |")
    digits_epochs = args.epochs or validate(resolve(flags={"defense": {"name": "uadat"}})).train.epochs
    for memory in sorted({0, q}):
        report(f"digits (smallcnn, batch 64, {digits_epochs} epochs, memory {memory})",
               measure({"name": "digits"}, digits_epochs, None, 0, memory))
        if args.fashion_mnist:
            report(f"fashion-mnist (trades-smallcnn, batch 128, {args.fashion_mnist} training images, 2 epochs, "
                   f"memory {memory})", measure({"name": "fashion-mnist"}, 2, args.fashion_mnist, 128, memory))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
