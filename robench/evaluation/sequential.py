"""Clean and robust accuracy, attacks applied in sequence to points still robust.

A point counts as robust after attack k only if it was classified correctly clean and
under attacks 1..k; the last entry is therefore the worst case over the suite, and
later (usually stronger, slower) attacks run on ever fewer points.

With a ``state_dir`` the evaluation is resumable: the per-example flags are saved
after every attack, and whole-set attacks (AutoAttack) keep their own state file
there, so a rerun after a crash continues where it stopped.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from robench.api.contracts import Attack, AttackOutcome, TensorSplit
from robench.api.errors import PluginLoadError
from robench.api.io import atomic_write_text, file_safe
from robench.api.threat import ThreatModel
from robench.core.progress import NullReporter, Reporter
from robench.engine.batches import iterate_batches
from robench.evaluation.contract import blame, check_adversaries, check_flags, check_in_threat, entry_method, overrides

WORST_CASE = "worst case"
_STATE_FILE = "suite.json"


@dataclass(frozen=True)
class EvalResult:
    #: percent: "clean", one cumulative entry per attack label, then ``WORST_CASE``
    accuracy: dict[str, float]
    n: int
    #: reliability warnings raised by the attacks (AutoAttack's sanity checks)
    flags: list[str] = field(default_factory=list)
    #: which evaluated points survived every attack, in the order of ``indices``
    robust: Tensor | None = None
    indices: Tensor | None = None


@torch.no_grad()
def predict_correct(
    model: nn.Module, split: TensorSplit, idx: Tensor, batch_size: int, device: torch.device
) -> Tensor:
    """Boolean flags (on the CPU): is ``split[idx]`` classified correctly."""
    flags = [
        (model(x).argmax(1) == y).cpu()
        for x, y in iterate_batches(split, batch_size, device=device, indices=idx)
    ]
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)


def percent(flags: Tensor) -> float:
    """Exact percentage from integer counts (no float32 rounding noise in records)."""
    return 100.0 * int(flags.sum()) / len(flags) if len(flags) else 0.0


def subset_indices(n_total: int, n_eval: int | None, seed: int = 0) -> Tensor:
    """A fixed subset (same for every run) when ``n_eval`` < the split size."""
    if n_eval is None or n_eval >= n_total:
        return torch.arange(n_total)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=gen)[:n_eval].sort().values


def attack_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """Attack ``index`` of the suite draws from its own stream, so its result does not
    depend on which attacks ran before it (or were restored from a saved state)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 1_000_003 + index)
    return gen


def attack_still_correct(
    attack: Attack,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    generator: torch.Generator | None,
    state_path: Path | None = None,
    batch_size: int | None = None,
) -> AttackOutcome:
    """Which of ``x`` the model still classifies correctly under ``attack`` (flags on
    the CPU), and the warnings this call raised.

    The attack's adversaries are checked (:mod:`robench.evaluation.contract`) and the model's
    verdict on them is the result: a point counts as broken only where the model
    misclassifies an adversary inside the threat model. Attacks that keep the default
    :meth:`~robench.api.Attack.evaluate_points` are run through ``perturb`` here, so
    nothing is computed twice; ``batch_size`` bounds the forward passes of that verdict
    for whole-set attacks.
    """
    method = entry_method(attack)
    if method == "evaluate_points":
        outcome = attack.evaluate_points(model, x, y, threat, generator=generator, state_path=state_path)
        if not isinstance(outcome, AttackOutcome):
            raise PluginLoadError(f"{blame(attack, method)} {type(outcome).__name__}, not robench.api.AttackOutcome")
        check_flags(attack, method, outcome.still_correct, y)
        x_adv, flags = outcome.adversaries, list(outcome.flags)
    elif method == "still_correct":  # written for plugin API 1.0: flags without adversaries
        kwargs = {"state_path": state_path} if attack.whole_set else {}
        check_flags(attack, method, attack.still_correct(model, x, y, threat, generator=generator, **kwargs), y)
        x_adv, flags = None, []
    else:
        x_adv, flags = attack.perturb(model, x, y, threat, generator=generator), []
    if x_adv is None:
        raise PluginLoadError(
            f"{blame(attack, method)} no adversaries; robench checks every attack's adversaries against "
            "the threat model, so an attack that decides per point itself must override evaluate_points "
            "and return AttackOutcome(still_correct, flags, adversaries) (plugin API 1.1)"
        )
    check_in_threat(attack, method, check_adversaries(attack, method, x_adv, x), x, threat)
    if overrides(attack, "flags"):  # the deprecated way: warnings kept on the attack object
        flags += [m for m in attack.flags() if m not in flags]
    return AttackOutcome(_verdict(model, x_adv, y, batch_size or len(y)), flags, x_adv)


@torch.no_grad()
def _verdict(model: nn.Module, x_adv: Tensor, y: Tensor, batch_size: int) -> Tensor:
    """Is each adversary still classified correctly (flags on the CPU)."""
    if not len(y):
        return torch.zeros(0, dtype=torch.bool)
    return torch.cat([
        (model(x_adv[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).cpu()
        for i in range(0, len(y), batch_size)
    ])


class _SuiteState:
    """Per-attack robust flags on disk, so a rerun skips the attacks already done."""

    def __init__(self, folder: Path | None, n: int) -> None:
        self.folder, self.n = folder, n
        self.done: list[dict[str, object]] = []
        path = folder / _STATE_FILE if folder is not None else None
        if path is not None and path.is_file():
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
                if saved.get("n") == n:
                    self.done = list(saved["done"])
            except (OSError, ValueError, KeyError, TypeError):
                self.done = []  # unreadable state: start over, never crash on it

    def restored(self, position: int, label: str) -> tuple[Tensor, list[str]] | None:
        """The flags saved for attack ``position`` and the warnings it raised then."""
        if position < len(self.done) and self.done[position].get("label") == label:
            entry = self.done[position]
            bits = entry.get("robust", "")
            if isinstance(bits, str) and len(bits) == self.n and set(bits) <= {"0", "1"}:
                flags = entry.get("flags", [])
                kept = [str(f) for f in flags] if isinstance(flags, list) else []
                return torch.tensor([b == "1" for b in bits], dtype=torch.bool), kept
        del self.done[position:]  # the suite changed from here on: redo the rest
        return None

    def save(self, label: str, robust: Tensor, messages: list[str]) -> None:
        bits = "".join("1" if b else "0" for b in robust.tolist())
        self.done.append({"label": label, "robust": bits, "flags": messages})
        if self.folder is not None:
            payload = json.dumps({"n": self.n, "done": self.done})
            atomic_write_text(self.folder / _STATE_FILE, payload)

    def attack_state(self, position: int, label: str) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / f"{position}-{file_safe(label)}.state.json"


def evaluate(
    model: nn.Module,
    split: TensorSplit,
    attacks: Sequence[Attack],
    threat: ThreatModel,
    *,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
    n_eval: int | None = None,
    reporter: Reporter | None = None,
    state_dir: Path | None = None,
) -> EvalResult:
    """Clean accuracy, then each attack on the points that survived the ones before.

    ``state_dir`` (optional) must be specific to this model and suite; it is removed
    when the evaluation completes.
    """
    reporter = reporter or NullReporter()
    was_training = model.training
    model.eval()
    idx = subset_indices(len(split), n_eval)
    n = len(idx)
    task = reporter.task("eval clean", n)
    robust = predict_correct(model, split, idx, batch_size, device)
    task.advance(n)
    task.done()
    accuracy = {"clean": percent(robust)}
    state = _SuiteState(state_dir, n)
    flags: list[str] = []
    for position, attack in enumerate(attacks):
        label = attack.label()
        saved = state.restored(position, label)
        if saved is not None:
            robust, messages = saved
        else:
            still, messages = _attack_survivors(
                attack, model, split, idx[robust], threat, attack_generator(seed, position, device),
                batch_size=batch_size, device=device, reporter=reporter, state_path=state.attack_state(position, label),
            )
            updated = robust.clone()
            updated[robust] = still
            robust = updated
            state.save(label, robust, messages)
        accuracy[label] = percent(robust)
        flags.extend(f"{label}: {m}" for m in messages if f"{label}: {m}" not in flags)
    accuracy[WORST_CASE] = percent(robust)
    if state_dir is not None:
        shutil.rmtree(state_dir, ignore_errors=True)
    model.train(was_training)
    return EvalResult(accuracy, n, flags, robust, idx)


def _attack_survivors(
    attack: Attack, model: nn.Module, split: TensorSplit, todo: Tensor, threat: ThreatModel,
    gen: torch.Generator, *, batch_size: int, device: torch.device, reporter: Reporter, state_path: Path | None,
) -> tuple[Tensor, list[str]]:
    """Which of the points ``todo`` survive ``attack``, and the warnings it raised: batch by
    batch, or all at once for attacks that batch internally (``whole_set``)."""
    still = torch.zeros(len(todo), dtype=torch.bool)
    messages: list[str] = []
    task = reporter.task(f"eval {attack.label()}", max(len(todo), 1))
    if attack.whole_set and len(todo):
        x = split.images(todo.to(split.x.device)).to(device)
        y = split.y[todo.to(split.y.device)].to(device)
        outcome = attack_still_correct(attack, model, x, y, threat, gen, state_path=state_path, batch_size=batch_size)
        still[:], messages = outcome.still_correct, outcome.flags
        task.advance(len(todo))
    else:
        pos = 0
        for x, y in iterate_batches(split, batch_size, device=device, indices=todo):
            outcome = attack_still_correct(attack, model, x, y, threat, gen)
            still[pos : pos + len(y)] = outcome.still_correct
            messages += [m for m in outcome.flags if m not in messages]
            pos += len(y)
            task.advance(len(y))
    task.done()
    return still, messages
