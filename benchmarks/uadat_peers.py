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
from robench.core.paths import data_root
from robench.core.seeding import make_generator, seed_everything
from robench.engine.train import train
from robench.workflows.run import build_model, load_data, plan_run


def simulate(batch: int, classes: int, accuracy: float, trials: int = 20_000, seed: int = 0) -> float:
    """Monte Carlo share of misclassified examples that have no correct same-class peer."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (trials, batch), generator=g)
    correct = torch.rand(trials, batch, generator=g) < accuracy
    same = y[:, :, None] == y[:, None, :]
    peers = (same & correct[:, None, :]).sum(2)  # an example is never its own peer when misclassified
    wrong = ~correct
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
        def counting(logits: torch.Tensor, y: torch.Tensor, stats: Any, width: float, smoothing: float) -> torch.Tensor:
            correct = logits.argmax(1) == y
            peers = (correct[None, :] & (y[None, :] == y[:, None])).any(1)
            self.batches.append((len(y), int((~correct).sum()), int((~correct & ~peers).sum())))
            return self._original(logits, y, stats, width, smoothing)

        uadat_module._reference = counting
        return self

    def __exit__(self, *exc: object) -> None:
        uadat_module._reference = self._original


def measure(data: dict[str, Any], epochs: int, subset: int | None, batch_size: int) -> dict[int, dict[str, int]]:
    flags = {"defense": {"name": "uadat"}, "data": data, "seed": 0, "device": "cpu",
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
    args = p.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("\nsimulated: share of misclassified examples with no correct same-class peer in the batch")
    print("| batch | classes | clean accuracy | Monte Carlo | (1 - a/K)^(B-1) |")
    print("|---:|---:|---:|---:|---:|")
    for batch, classes in ((64, 10), (128, 10), (128, 100), (128, 200)):
        for accuracy in (0.5, 0.7, 0.9):
            closed = (1 - accuracy / classes) ** (batch - 1)
            print(f"| {batch} | {classes} | {accuracy:.1f} | {100 * simulate(batch, classes, accuracy):.2f}% | "
                  f"{100 * closed:.2f}% |")
    digits_epochs = args.epochs or validate(resolve(flags={"defense": {"name": "uadat"}})).train.epochs
    report(f"digits (smallcnn, batch 64, {digits_epochs} epochs)", measure({"name": "digits"}, digits_epochs, None, 0))
    if args.fashion_mnist:
        report(f"fashion-mnist (trades-smallcnn, batch 128, {args.fashion_mnist} training images, 2 epochs)",
               measure({"name": "fashion-mnist"}, 2, args.fashion_mnist, 128))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
