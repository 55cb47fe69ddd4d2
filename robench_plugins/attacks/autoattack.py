"""AutoAttack (Croce & Hein, ICML 2020) through the PyPI package ``pyautoattack``.

``autoattack`` runs a version ("standard": APGD-CE, APGD-T, FAB-T, Square, each on the
points still robust) or a custom subset; ``apgd-ce`` and ``apgd-t`` run one of its
attacks alone. AutoAttack's seed defaults to the time, so robench always passes one.
Its sanity checks (randomness, softmax output, zero gradients, dynamic defence, too
few classes) are logged as warnings on the ``auto-attack`` logger; each call collects
its own and returns them with its result (:meth:`AutoAttackSuite.evaluate_points`), so
that the evaluation records them with that result and no other.

The evaluation hands AutoAttack every remaining point at once (``whole_set``): it
batches internally. To make an interrupted evaluation resumable, robench runs the
version's attacks one at a time (the runner configured by pyautoattack for that
version, restricted to one attack per call) on the points still robust, and saves
the per-example flags after each in a state file (the adversaries found so far in a
tensor file beside it: the evaluation checks them against the threat model). This gives exactly the batches,
seeds and results of one call, because AutoAttack itself attacks only the points
still robust, in order. pyautoattack's own ``state_path`` cannot be used for this:
0.2.0 writes the attack set as its string form and then refuses every state file it
wrote ("created with a different set of attacks"). With its sub-attacks run apart,
AutoAttack's Square-success check is done here instead (same rule: Square breaking
more than 0.2% of the points means the gradient-based attacks were not reliable).
"""
from __future__ import annotations

import io
import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, TypeVar

import torch
from torch import Tensor, nn

from robench.api import Attack, AttackOutcome
from robench.api.errors import ConfigError
from robench.api.io import atomic_write_bytes, atomic_write_text
from robench.api.params import param
from robench.api.perturb import attack_mode, project
from robench.api.threat import ThreatModel

AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().split()))


@dataclass(frozen=True)
class AutoAttackParams:
    version: Literal["standard", "plus", "rand", "custom"] = param("standard", help="AutoAttack version")
    attacks: tuple[str, ...] = param((), help=f"for version custom: a subset of {', '.join(AA_ATTACKS)}")
    seed: int = param(0, ge=0, help="AutoAttack's seed (its own default is the time)")
    batch_size: int = param(500, ge=1, help="AutoAttack's internal batch size")


@dataclass(frozen=True)
class SingleAttackParams:
    seed: int = param(0, ge=0, help="AutoAttack's seed (its own default is the time)")
    batch_size: int = param(500, ge=1)


def _reset_dynamic_check() -> None:
    """pyautoattack 0.2.0 counts autograd calls for its dynamic-defence check in a
    module-global dict that is never reset, so after one dynamic model every later
    model in the process would be flagged too. Start each evaluation from zero."""
    from pyautoattack import checks

    for key in checks.funcs:
        checks.funcs[key] = 0


class _RunnerParams(Protocol):
    """What every AutoAttack plugin's Params have."""

    @property
    def seed(self) -> int: ...
    @property
    def batch_size(self) -> int: ...


R = TypeVar("R", bound=_RunnerParams)


class _AutoAttackRunner(Attack[R]):
    """Runs pyautoattack's ``run_standard_evaluation`` with resumable state; the
    plugins below choose the version and the attacks."""

    whole_set = True

    def _version_and_attacks(self) -> tuple[str, tuple[str, ...]]:
        raise NotImplementedError

    def _only(self) -> list[str] | None:
        """Attacks of the version's configuration to keep (None: all of them)."""
        return None

    def _runner(self, model: nn.Module, threat: ThreatModel, device: torch.device) -> object:
        from pyautoattack import AutoAttack

        version, attacks = self._version_and_attacks()
        runner = AutoAttack(
            model, attacks=list(attacks) or None, device=device, eps=threat.value,
            norm=threat.norm, seed=self.params.seed, version=version,
        )
        if self._only() is not None:
            runner.attacks_to_run = self._only()
        return runner

    def _call(self, runner: object, x: Tensor, y: Tensor, threat: ThreatModel, warnings: list[str]) -> Tensor:
        """One ``run_standard_evaluation``, its warnings added to ``warnings``, the result in the ball."""
        collect = _Collect()
        logger = logging.getLogger("auto-attack")
        logger.addHandler(collect)
        try:
            _reset_dynamic_check()
            x_adv, _ = runner.run_standard_evaluation(x, y, batch_size=self.params.batch_size)  # type: ignore[attr-defined]
        finally:
            logger.removeHandler(collect)
        warnings.extend(m for m in collect.messages if m not in warnings)
        return project(x_adv.to(x.device, x.dtype), x, threat)  # float-exact inside the ball

    def perturb(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        with attack_mode(model):  # eval + frozen weights: FAB's backward computes no weight grads
            return self._call(self._runner(model, threat, x.device), x, y, threat, [])

    def evaluate_points(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        generator: torch.Generator | None = None,
        state_path: Path | None = None,
    ) -> AttackOutcome:
        """Stage by stage on the points still robust, each stage's progress, adversaries
        and warnings saved in ``state_path``; the warnings are this call's only."""
        with attack_mode(model):
            runner = self._runner(model, threat, x.device)
            stages = list(runner.attacks_to_run)  # type: ignore[attr-defined]
            adversaries = x.detach().clone()
            robust, done, warnings = _load_state(state_path, stages, adversaries)
            if robust is None:
                robust = self._correct(model, x, y)
            for stage in stages:
                if stage in done:
                    continue
                idx = robust.nonzero().squeeze(1)
                if len(idx):
                    runner.attacks_to_run = [stage]  # type: ignore[attr-defined]
                    x_adv = self._call(runner, x[idx.to(x.device)], y[idx.to(y.device)], threat, warnings)
                    still = self._correct(model, x_adv, y[idx.to(y.device)])
                    robust[idx] = still
                    adversaries[idx[~still].to(x.device)] = x_adv[(~still).to(x.device)]
                    if stage == "square" and len(done) > 0:
                        _check_square(int((~still).sum()), len(y), warnings)
                done.append(stage)
                _save_state(state_path, stages, done, robust, warnings, adversaries, x)
        return AttackOutcome(robust.to(y.device), warnings, adversaries)

    @torch.no_grad()
    def _correct(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Correctness flags on the CPU, in batches (a whole test set at once would not fit)."""
        bs = self.params.batch_size
        return torch.cat([(model(x[i : i + bs]).argmax(1) == y[i : i + bs]).cpu() for i in range(0, len(y), bs)])



def _check_square(broken: int, n: int, warnings: list[str]) -> None:
    """Square breaking points the gradient attacks left robust hints at gradient masking."""
    if n and broken / n > 0.002:
        message = (
            f"Square Attack has decreased the robust accuracy by {100 * broken / n:.2f}% after the "
            "gradient-based attacks: the evaluation with AutoAttack might be unreliable "
            "(gradient masking); consider an adaptive attack"
        )
        if message not in warnings:
            warnings.append(message)


def _adversaries_path(path: Path) -> Path:
    return path.with_suffix(".pt")


def _load_state(
    path: Path | None, stages: list[str], adversaries: Tensor
) -> tuple[Tensor | None, list[str], list[str]]:
    """Flags, finished stages and their warnings saved by an interrupted call with the
    same suite; the adversaries found so far are written into ``adversaries``."""
    n = len(adversaries)
    if path is None or not path.is_file():
        return None, [], []
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        bits, done, warnings = saved["robust"], list(saved["done"]), [str(w) for w in saved.get("warnings", [])]
        if saved["stages"] != stages or len(bits) != n or not set(done) <= set(stages):
            return None, [], []
        found = torch.load(_adversaries_path(path), map_location="cpu", weights_only=True)
        index, points = found["index"], found["adversaries"]
        if found["done"] != done or points.shape[1:] != adversaries.shape[1:] or len(index) != len(points):
            return None, [], []
        adversaries[index.to(adversaries.device)] = points.to(adversaries.device, adversaries.dtype)
        return torch.tensor([b == "1" for b in bits], dtype=torch.bool), done, warnings
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, IndexError, pickle.UnpicklingError):
        return None, [], []  # unreadable or inconsistent state: start over


def _save_state(
    path: Path | None, stages: list[str], done: list[str], robust: Tensor, warnings: list[str],
    adversaries: Tensor, x: Tensor,
) -> None:
    """The adversaries that differ from their input go to a tensor file beside the JSON
    state, written first: a JSON state is only ever read with its own adversaries."""
    if path is None:
        return
    changed = (adversaries != x).flatten(1).any(1).nonzero().squeeze(1)
    buffer = io.BytesIO()
    torch.save({"done": list(done), "index": changed.cpu(), "adversaries": adversaries[changed].cpu()}, buffer)
    atomic_write_bytes(_adversaries_path(path), buffer.getvalue())
    bits = "".join("1" if b else "0" for b in robust.tolist())
    atomic_write_text(path, json.dumps({"stages": stages, "done": done, "robust": bits, "warnings": warnings}))


class AutoAttackSuite(_AutoAttackRunner[AutoAttackParams]):
    Params = AutoAttackParams

    def __init__(self, params: AutoAttackParams | None = None) -> None:
        super().__init__(params)
        version, attacks = self._version_and_attacks()
        unknown = [a for a in attacks if a not in AA_ATTACKS]
        if unknown:
            raise ConfigError(f"attack.attacks: unknown {unknown}; choose from {', '.join(AA_ATTACKS)}")
        if (version == "custom") != bool(attacks):
            raise ConfigError("attack.attacks: give a list exactly when attack.version is custom")

    def _version_and_attacks(self) -> tuple[str, tuple[str, ...]]:
        return self.params.version, tuple(self.params.attacks)

    def label(self) -> str:
        version, attacks = self._version_and_attacks()
        if version == "standard":
            return "AutoAttack"
        return f"AutoAttack-{version}" if version != "custom" else "+".join(a.upper() for a in attacks)


class APGDCE(_AutoAttackRunner[SingleAttackParams]):
    """APGD on cross-entropy alone, configured as in AutoAttack's standard version
    (100 iterations, 1 restart), so its number is the first column of AutoAttack's."""

    Params = SingleAttackParams
    _attack = "apgd-ce"

    def _version_and_attacks(self) -> tuple[str, tuple[str, ...]]:
        return "standard", ()

    def _only(self) -> list[str] | None:
        return [self._attack]

    def label(self) -> str:
        return self._attack.upper()


class APGDT(APGDCE):
    """Targeted APGD on the DLR loss alone, as in the standard version (9 target classes)."""

    _attack = "apgd-t"
