"""robench's own checks against gradient masking, and accuracy-versus-eps sweeps.

Both use one fixed attack that the core owns (PGD-20 from :mod:`robench.api.perturb`),
so that a result can be compared with any other robench result whatever suite was
configured. The checks are cheap tell-tales of an evaluation that cannot be trusted:

* at eps 0 an attack cannot change anything, so PGD accuracy must equal clean
  accuracy (a difference means a randomised or input-dependent model);
* a larger budget can only help the attacker, so accuracy must not rise with eps;
* at a budget far beyond the threat model any honest model falls to near zero under
  PGD on the margin loss started at the input; a model that stays accurate there
  gives PGD no usable gradient.

A failed check becomes a flag on the result ("potentially unreliable"), never a crash.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction

import torch
from torch import Tensor, nn

from robench.api.contracts import TensorSplit
from robench.api.perturb import attack_mode, cross_entropy_loss, default_step_size, margin_loss, pgd, random_start
from robench.api.threat import ThreatModel
from robench.core.progress import NullReporter, Reporter
from robench.engine.batches import iterate_batches
from robench.evaluation.sequential import percent, predict_correct

SWEEP_STEPS = 20
#: eps multiples of the default ``--eps-sweep`` (exact fractions of the threat eps)
SWEEP_FACTORS = tuple(Fraction(f) for f in ("0", "1/4", "1/2", "3/4", "1", "5/4", "3/2", "2"))
#: the small sweep of the monotonicity check
CHECK_FACTORS = tuple(Fraction(f) for f in ("0", "1/4", "1/2", "1", "2"))
#: the "large eps" of the near-zero check, and what "near zero" means
LARGE_FACTOR = 8
NEAR_ZERO = 2.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class SweepPoint:
    eps: str
    eps_value: float
    accuracy: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def sweep_label() -> str:
    return f"PGD-{SWEEP_STEPS} (cross-entropy, random start, step 2.5*eps/{SWEEP_STEPS})"


def _pgd_correct(
    model: nn.Module,
    split: TensorSplit,
    idx: Tensor,
    threat: ThreatModel,
    *,
    batch_size: int,
    device: torch.device,
    seed: int,
    loss: Callable[[Tensor], Callable[[Tensor], Tensor]] = cross_entropy_loss,
    from_input: bool = False,
) -> Tensor:
    """Per-example flags: correct after PGD-20 at ``threat`` (eps 0 allowed)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    step = default_step_size(threat.value, SWEEP_STEPS)
    out = []
    with attack_mode(model):
        for x, y in iterate_batches(split, batch_size, device=device, indices=idx):
            start = x if from_input else random_start(x, threat, gen)
            x_adv = pgd(model, x, threat, loss(y), steps=SWEEP_STEPS, step_size=step, start=start)
            with torch.no_grad():
                out.append((model(x_adv).argmax(1) == y).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def _box_capped(threat: ThreatModel, factor: int) -> ThreatModel:
    """``factor`` x eps, but no more than the whole [0, 1] box for Linf."""
    if threat.norm == "Linf" and threat.value * factor > 1:
        return ThreatModel("Linf", "1")
    return threat.scaled(factor)


def eps_sweep(
    model: nn.Module,
    split: TensorSplit,
    idx: Tensor,
    threat: ThreatModel,
    *,
    eps_values: Sequence[str] | None = None,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
    reporter: Reporter | None = None,
    description: str = "eps sweep",
) -> list[SweepPoint]:
    """PGD-20 accuracy at each eps (default: 0 to 2x the threat eps, exact fractions)."""
    reporter = reporter or NullReporter()
    threats = (
        [ThreatModel(threat.norm, e) for e in eps_values]
        if eps_values
        else [threat.scaled(f) for f in SWEEP_FACTORS]
    )
    task = reporter.task(description, len(threats))
    points = []
    was_training = model.training
    model.eval()
    for t in threats:
        correct = _pgd_correct(model, split, idx, t, batch_size=batch_size, device=device, seed=seed)
        points.append(SweepPoint(t.eps, t.value, percent(correct)))
        task.advance(1)
    task.done()
    model.train(was_training)
    return points


def sanity_checks(
    model: nn.Module,
    split: TensorSplit,
    idx: Tensor,
    threat: ThreatModel,
    *,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
    reporter: Reporter | None = None,
) -> list[CheckResult]:
    """The three checks of the module docstring, on the points ``idx``."""
    was_training = model.training
    model.eval()
    clean = percent(predict_correct(model, split, idx, batch_size, device))
    sweep = eps_sweep(
        model, split, idx, threat, eps_values=[threat.scaled(f).eps for f in CHECK_FACTORS],
        batch_size=batch_size, device=device, seed=seed, reporter=reporter, description="robench checks",
    )
    curve = ", ".join(f"{p.eps}: {p.accuracy:.2f}" for p in sweep)
    results = [
        CheckResult(
            "eps0-equals-clean",
            sweep[0].accuracy == clean,
            f"PGD accuracy at eps 0 is {sweep[0].accuracy:.2f}%, clean accuracy {clean:.2f}%",
        )
    ]
    rises = [(a, b) for a, b in zip(sweep, sweep[1:]) if b.accuracy > a.accuracy]
    results.append(CheckResult(
        "monotone-in-eps",
        not rises,
        f"PGD accuracy by eps ({curve})"
        + ("" if not rises else "; rises " + ", ".join(f"from {a.eps} to {b.eps}" for a, b in rises)),
    ))
    large = _box_capped(threat, LARGE_FACTOR)
    acc = percent(_pgd_correct(
        model, split, idx, large, batch_size=batch_size, device=device, seed=seed,
        loss=margin_loss, from_input=True,
    ))
    results.append(CheckResult(
        "large-eps-breaks",
        acc <= NEAR_ZERO,
        f"PGD-{SWEEP_STEPS} (margin loss) accuracy at eps {large.eps} is {acc:.2f}% "
        f"(expected <= {NEAR_ZERO:g}%)",
    ))
    model.train(was_training)
    return results
