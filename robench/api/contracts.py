"""The plugin contracts: what a defense, architecture, dataset and attack must provide.

Every plugin is a class that subclasses one of the four bases below and is exposed
through an entry point (see :mod:`robench.core.registry`). Hyperparameters live in a
dataclass assigned to ``Params``; robench builds it from defaults, the YAML config and
``--set`` overrides, and passes it to the constructor. Plugins never see the CLI.

Conventions shared by all kinds:

* Inputs are float tensors in [0, 1], shape (N, C, H, W). Normalisation by the
  dataset's mean/std happens *inside* the model (:mod:`robench.api.model`), so that an
  attack's eps and the [0, 1] box mean what they say.
* Attacks and a defense's inner maximisation run with the model in eval mode and
  parameters frozen (:func:`robench.api.perturb.attack_mode`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import Tensor, nn

from robench.api.params import NoParams
from robench.api.threat import ThreatModel

#: a plugin's hyperparameter dataclass
P = TypeVar("P")


class Plugin(Generic[P]):
    """Common base: typed hyperparameters and the contract version.

    Generic over its ``Params`` dataclass, so that ``self.params`` has that type in the
    plugin's methods: ``class PGDAT(Defense[PGDATParams])`` with ``Params = PGDATParams``.
    """

    #: Dataclass of hyperparameters, with the official defaults.
    Params: ClassVar[type[Any]] = NoParams
    #: The :data:`robench.api_version` the plugin was written for.
    api_version: ClassVar[str] = "1.0"
    #: For plugin families: the ``Params`` field that ``NAME/VARIANT`` sets, so that
    #: ``timm/resnet18`` creates the ``timm`` plugin with ``model="resnet18"``.
    variant_param: ClassVar[str | None] = None
    #: For counted plugins: the ``Params`` field that a ``NAME-N`` suffix sets, so that
    #: ``pgd-20`` creates ``pgd`` with ``steps=20``.
    count_param: ClassVar[str | None] = None

    params: P

    def __init__(self, params: P | None = None) -> None:
        self.params = params if params is not None else self.Params()


# --------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class TensorSplit:
    """One split held as two tensors: images (uint8 0..255 or float in [0,1]) and labels."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> TensorSplit:
        return TensorSplit(self.x.to(device), self.y.to(device))

    def images(self, index: Tensor | slice | None = None) -> Tensor:
        """Float images in [0, 1] (uint8 storage is scaled by 1/255)."""
        x = self.x if index is None else self.x[index]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


@dataclass(frozen=True)
class DataSplits:
    """``train`` for fitting, ``val`` held out from train for checkpoint selection, ``test``."""

    train: TensorSplit
    test: TensorSplit
    val: TensorSplit | None = None


class Dataset(Plugin[P]):
    """A labelled image dataset, loaded whole into tensors.

    Subclasses set the class attributes (or instance attributes in ``__init__``) and
    implement :meth:`load`.
    """

    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: The threat model that published results on this dataset use.
    threat_model: ThreatModel
    #: False for datasets that ship inside a Python package (no folder is searched,
    #: none is recorded, ``root`` is ignored).
    needs_files: ClassVar[bool] = True
    #: Folders outside robench's own where the operating system may install this
    #: dataset's files (a distribution package), searched after them.
    system_folders: ClassVar[tuple[str, ...]] = ()
    #: Another way to get the files than ``robench data fetch``, named in the message a
    #: missing dataset gives (for instance the distribution package to install).
    install_hint: ClassVar[str] = ""

    def has_files(self, root: Path) -> bool:
        """Whether ``root`` holds any of this dataset's files, intact or not.

        robench reads the dataset from the first folder of its search order for which
        this is true, so a folder with a damaged copy is reported, not skipped. The
        default, true for every folder, makes the first folder of the order the one
        used (embedded datasets ignore it anyway).
        """
        return True

    def load(self, root: Path, seed: int) -> DataSplits:
        """Return the splits from files under ``root`` (embedded datasets ignore it).

        ``seed`` fixes any split the plugin draws itself (the held-out validation split).
        Missing or damaged files: raise :class:`robench.api.errors.DataNotFoundError` saying
        what was expected where; never download here.
        """
        raise NotImplementedError

    def fetch(self, root: Path) -> None:
        """Download the dataset into ``root``; only ever called when the user asks.

        The default does nothing (embedded datasets need no download).
        """

    def augment(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Standard train-time augmentation of a float batch in [0, 1]; identity by default.

        Draw every random choice from ``generator``: in training it lives on the batch's
        device, so drawing there keeps the step free of host copies, and its state is
        saved for resuming."""
        return x


# ---------------------------------------------------------------------- architectures
class Architecture(Plugin[P]):
    """Builds a classifier that takes *normalised* inputs and returns logits.

    robench wraps the result with the dataset's normalisation, so the model it trains
    and attacks always takes [0, 1] inputs.
    """

    def build(self, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
        raise NotImplementedError


# --------------------------------------------------------------------------- defenses

@dataclass
class LossOutput:
    """A defense's result for one batch: the loss to minimise, and the logits whose
    accuracy the engine reports as training accuracy (adversarial ones for AT)."""

    loss: Tensor
    logits: Tensor


class Defense(Plugin[P]):
    """Computes the training loss of a batch, inner maximisation included.

    A defense never touches the optimizer, the data loader or the learning rate; it is
    called with the model in train mode and must leave it so.
    """

    #: The validation accuracy that picks the ``best`` checkpoint: ``"val_pgd"`` (the
    #: robust-overfitting convention of Rice et al.) or ``"val_clean"`` (for defenses
    #: that do not aim at robustness, whose PGD accuracy is near zero every epoch).
    selection_metric: ClassVar[str] = "val_pgd"

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel) -> LossOutput:
        raise NotImplementedError

    def check_model(self, model: nn.Module, input_shape: tuple[int, int, int]) -> None:
        """Refuse a model this defense cannot train before training starts, by raising
        :class:`~robench.api.errors.ConfigError` with one line that says why and what to
        do, rather than crashing in the first batch. The default accepts every model."""

    def forward_passes_per_image(self) -> float | None:
        """Training cost of one image in forward-pass equivalents F (a backward pass
        counts 2F), so that boards can compare defenses at equal compute: standard
        training is 3F, PGD-10 AT 23F. None (the default) leaves the board's cost blank."""
        return None

    def epoch_state(self) -> dict[str, Any]:
        """What the defense carries from one batch to the next within an epoch (tensors
        and plain values), so that a run stopped mid-epoch resumes exactly: the engine
        saves it in the mid-epoch ``last.pt``, one copy per process. Default: nothing."""
        return {}

    def restore_epoch_state(self, state: Mapping[str, Any] | None) -> None:
        """Take back what :meth:`epoch_state` gave (on a resume), or, with None, forget
        it: the engine calls this before every epoch's first step. A defense that
        carries nothing ignores both."""


class AdversarialDefense(Defense[P]):
    """Adversarial training, cut at its one real seam: the inner maximisation
    (:meth:`adversary`, eval-mode BN and frozen weights) and the outer loss on its
    result (:meth:`objective`, in train mode), so that each can be checked, timed or
    replaced on its own. PGD-AT, TRADES, MART and UAD-AT are written this way."""

    def adversary(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel) -> Tensor:
        """Adversarial inputs for the batch, inside ``threat`` and the [0, 1] box."""
        raise NotImplementedError

    def objective(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> LossOutput:
        """The loss to minimise given the clean batch and its adversaries."""
        raise NotImplementedError

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel) -> LossOutput:
        return self.objective(model, x, self.adversary(model, x, y, threat), y)


# ---------------------------------------------------------------------------- attacks

@dataclass
class AttackOutcome:
    """One attack call's result: which points the model still classifies correctly, the
    adversaries behind that verdict, and the warnings this call raised about the
    evaluation's reliability (AutoAttack's sanity checks).

    ``adversaries`` holds one input per point, shaped like ``x``: what the attack found
    for the points it broke, and any point of the threat model (usually the input
    itself) for the others. robench checks that they lie in the eps-ball and the [0, 1]
    box, and counts a point as broken only where the model misclassifies its adversary,
    so an attack's success is checked, not trusted. The warnings travel with the result,
    so one evaluation never reports another's.
    """

    still_correct: Tensor
    flags: list[str] = field(default_factory=list)
    adversaries: Tensor | None = None


class Attack(Plugin[P]):
    """Maps (model, x, y) to adversarial inputs inside ``threat`` and the [0, 1] box.

    Seeded: the same ``generator`` state (or the attack's own ``seed`` parameter) gives
    the same result.
    """

    #: True for attacks that batch internally and keep their own resumable state
    #: (AutoAttack): the evaluation hands them every remaining point in one call,
    #: together with a state file, instead of batch by batch.
    whole_set: ClassVar[bool] = False

    def perturb(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        raise NotImplementedError

    def still_correct(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        generator: torch.Generator | None = None,
        state_path: Path | None = None,
    ) -> Tensor:
        """Boolean flags: which points the model still classifies correctly under attack
        (a convenience: :meth:`evaluate_points` is what the evaluation calls)."""
        return self.evaluate_points(model, x, y, threat, generator=generator, state_path=state_path).still_correct

    def evaluate_points(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        threat: ThreatModel,
        generator: torch.Generator | None = None,
        state_path: Path | None = None,
    ) -> AttackOutcome:
        """The verdict on every point, its adversaries and this call's warnings.

        The default runs :meth:`perturb`. Override it in attacks that decide per point
        themselves or keep their own state (``whole_set``; ``state_path`` is where an
        interrupted call keeps its progress), and return the adversaries with the flags.
        """
        x_adv = self.perturb(model, x, y, threat, generator=generator)
        with torch.no_grad():
            return AttackOutcome(model(x_adv).argmax(1) == y, adversaries=x_adv)

    def flags(self) -> list[str]:
        """Deprecated: warnings kept on the attack object. Return them from
        :meth:`evaluate_points` instead; robench still reads this for plugins that do not."""
        return []

    def label(self) -> str:
        """Short name for tables, e.g. ``PGD-20``."""
        return type(self).__name__


__all__ = [
    "AdversarialDefense",
    "Architecture",
    "Attack",
    "AttackOutcome",
    "DataSplits",
    "Dataset",
    "Defense",
    "LossOutput",
    "Plugin",
    "TensorSplit",
    "ThreatModel",
]
