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

from robench.api import Attack, AttackOutcome, TensorSplit
from robench.engine.batches import iterate_batches
from robench.errors import PluginLoadError
from robench.io import atomic_write_text
from robench.progress import NullReporter, Reporter
from robench.records import file_safe
from robench.registry import plugin_origin
from robench.threat import ThreatModel

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
) -> AttackOutcome:
    """Which of ``x`` the model still classifies correctly under ``attack`` (flags on
    the CPU), and the warnings this call raised.

    What the attack returns is checked here, because a plugin's tensor of the wrong
    type or shape would otherwise fail deep inside the model's forward pass, or worse,
    broadcast into a meaningless accuracy; the error names the plugin and its
    distribution. Attacks that keep the default ``still_correct`` are run through
    ``perturb`` here so that its output can be checked.
    """
    def own(method: str) -> bool:  # the plugin overrides Attack's method
        return getattr(type(attack), method, None) not in (None, getattr(Attack, method))

    if not own("evaluate_points") and not own("still_correct"):
        x_adv = attack.perturb(model, x, y, threat, generator=generator)
        _check_adversarial(attack, x_adv, x)
        with torch.no_grad():
            outcome = AttackOutcome(model(x_adv).argmax(1) == y)
    else:
        outcome = attack.evaluate_points(model, x, y, threat, generator=generator, state_path=state_path)
        if not isinstance(outcome, AttackOutcome):
            raise PluginLoadError(f"{_blame(attack, 'evaluate_points')} {type(outcome).__name__}, "
                                  "not robench.api.AttackOutcome")
    _check_flags(attack, outcome.still_correct, y)
    if own("flags"):  # the deprecated way: warnings kept on the attack object
        outcome.flags += [m for m in attack.flags() if m not in outcome.flags]
    return AttackOutcome(outcome.still_correct.cpu(), list(outcome.flags))


def _shape(t: Tensor) -> str:
    return "x".join(map(str, t.shape))


def _blame(attack: Attack, method: str) -> str:
    return f"{plugin_origin(attack)} ({attack.label()}): {method}() returned"


def _check_adversarial(attack: Attack, x_adv: object, x: Tensor) -> None:
    """``perturb`` must return float inputs shaped like ``x``, on its device."""
    wanted = f"it must return adversarial inputs shaped like its input ({_shape(x)}, float, on {x.device})"
    if not isinstance(x_adv, Tensor):
        raise PluginLoadError(f"{_blame(attack, 'perturb')} {type(x_adv).__name__}, not a tensor; {wanted}")
    if x_adv.shape != x.shape:
        raise PluginLoadError(f"{_blame(attack, 'perturb')} a tensor of shape {_shape(x_adv)}; {wanted}")
    if not x_adv.dtype.is_floating_point or x_adv.device != x.device:
        raise PluginLoadError(f"{_blame(attack, 'perturb')} a {x_adv.dtype} tensor on {x_adv.device}; {wanted}")


def _check_flags(attack: Attack, flags: object, y: Tensor) -> None:
    """``still_correct`` must return one boolean per input."""
    wanted = f"it must return one boolean flag per input ({len(y)})"
    if not isinstance(flags, Tensor):
        raise PluginLoadError(f"{_blame(attack, 'still_correct')} {type(flags).__name__}, not a tensor; {wanted}")
    if flags.dtype != torch.bool or tuple(flags.shape) != (len(y),):
        raise PluginLoadError(
            f"{_blame(attack, 'still_correct')} a {flags.dtype} tensor of shape {_shape(flags)}; {wanted}"
        )


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
                return torch.tensor([b == "1" for b in bits], dtype=torch.bool), list(entry.get("flags", []))
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
            todo = idx[robust]
            gen = attack_generator(seed, position, device)
            still = torch.zeros(len(todo), dtype=torch.bool)
            messages: list[str] = []
            task = reporter.task(f"eval {label}", max(len(todo), 1))
            if attack.whole_set and len(todo):
                x = split.images(todo.to(split.x.device)).to(device)
                y = split.y[todo.to(split.y.device)].to(device)
                outcome = attack_still_correct(
                    attack, model, x, y, threat, gen, state_path=state.attack_state(position, label)
                )
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
