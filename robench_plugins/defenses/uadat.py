"""UAD-AT: uncertainty-aware distributional adversarial training (Dong et al., arXiv 2411.02871).

Only the paper's abstract is public; docs/uadat.md states the method as robench
implements it, each choice the abstract leaves open, and the alternatives rejected.
Per batch: PGD adversaries (as PGD-AT); M sampled adversaries per example, drawn by
re-normalising the adversarial features at the stage layers with statistics
perturbed by their own batch uncertainty (a distribution of adversaries instead of
one point); a KL match of those to a reference distribution that, for misclassified
clean examples, is rebuilt from statistically close correct examples of the same
class; and an alignment of the model's own clean and adversarial input gradients.
Each component has a switch (``sampling``, ``refine``, ``align``) for ablations.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robench.api import AdversarialDefense, LossOutput
from robench.api.errors import ConfigError
from robench.api.features import FeatureHooks, batch_spread, channel_stats, feature_modules, feature_shapes, renormalize
from robench.api.model import eager_forwards, frozen_batchnorm_statistics
from robench.api.params import param
from robench.api.perturb import attack_loss_scale
from robench.api.threat import ThreatModel
from robench_plugins.defenses.pgd_at import PGDATParams, attack_passes, pgd_adversary


@dataclass(frozen=True)
class UADATParams(PGDATParams):
    # beta and lambda: the best validation PGD accuracy of a sweep on digits (docs/uadat.md)
    beta: float = param(0.5, ge=0, help="weight of the distribution match L_match")
    align_weight: float = param(0.1, ge=0, help="lambda, weight of the gradient alignment L_align")
    samples: int = param(2, ge=1, help="M, sampled adversaries per example")
    sample_prob: float = param(0.5, ge=0, le=1, help="p, chance that a layer resamples in a forward pass")
    layers: tuple[str, ...] = param((), help="feature layers; empty: those the architecture declares")
    kernel_width: float = param(1.0, gt=0, help="tau of the proximity kernel exp(-d^2 / tau), d on standardised statistics")
    standardize: bool = param(True, help="distances on statistics standardised over the batch (scale-free tau)")
    sampled_bn_update: bool = param(False, help="passes with resampled features also update BatchNorm's running statistics")
    smoothing: float = param(0.1, ge=0, lt=1, help="label smoothing of the fallback reference")
    memory: int = param(
        0, ge=0, hashed_at_default=False,
        help="clean examples of earlier batches (this epoch) kept as further peers for the refinement; 0: the batch's only",
    )
    uncertainty: Literal["batch", "shift"] = param(
        "batch", help="the spread of sampled statistics: across the batch (DSU), or each example's "
        "clean-to-adversarial shift of them", hashed_at_default=False,
    )
    sampling: bool = param(True, help="component 2: sample adversaries with statistic uncertainty")
    refine: bool = param(True, help="component 3: refined reference for misclassified clean examples")
    align: bool = param(True, help="component 5: introspective input-gradient alignment")
    align_fraction: float = param(
        1.0, gt=0, le=1, hashed_at_default=False,
        help="share of the batch whose input gradients are aligned; below 1, through separate forward passes "
        "of that share only (cheaper: the double backward runs over fewer examples)",
    )


Spread = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def across_batch(mu: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """DSU's uncertainty: each statistic's standard deviation across the batch, per channel."""
    return batch_spread(mu), batch_spread(sigma)


def shift_from(clean: tuple[Tensor, Tensor], copies: int) -> Spread:
    """The adversary's disruption as the uncertainty: per example and channel, how far its
    statistics moved from those of its clean features (``clean``: (N, C) each; the
    adversarial batch holds ``copies`` repeats of the N examples).

    A constant of the pass, unlike the batch spread: it says how wide to sample, and is
    not trained through (|shift| has no useful gradient where the adversary moved nothing)."""
    clean_mu, clean_sigma = (c.repeat(copies, 1) for c in clean)

    def spread(mu: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        return (mu.detach() - clean_mu).abs(), (sigma.detach() - clean_sigma).abs()
    return spread


def resample(h: Tensor, noise: tuple[Tensor, Tensor] | None = None, spread: Spread = across_batch) -> Tensor:
    """Features with statistics mu + e1 s(mu), sigma + e2 s(sigma), e ~ N(0, 1), where s is
    the uncertainty ``spread`` gives (reparameterised: gradients flow through mu, sigma
    and their spreads)."""
    mu, sigma = channel_stats(h)
    e1, e2 = noise if noise is not None else (torch.randn_like(mu), torch.randn_like(sigma))
    s_mu, s_sigma = spread(mu, sigma)
    return renormalize(h, mu, sigma, mu + e1 * s_mu, sigma + e2 * s_sigma)


def full_precision(device: torch.device) -> torch.autocast:
    """Autocast off: what follows runs in the float32 its inputs are cast to."""
    return torch.autocast(device.type, enabled=False)


@dataclass
class PeerBank:
    """Correctly classified clean examples of earlier batches, as peers for the refinement:
    a queue of their raw statistics, clean softmax and label (-1: an empty slot or an
    example that was misclassified). Written without reading anything back from the
    device, so a GPU step never waits for it."""

    stats: Tensor
    probs: Tensor
    labels: Tensor
    next: int = 0

    @classmethod
    def empty(cls, size: int, dim: int, classes: int, device: torch.device) -> PeerBank:
        return cls(torch.zeros(size, dim, device=device), torch.zeros(size, classes, device=device),
                   torch.full((size,), -1, dtype=torch.long, device=device))

    def push(self, stats: Tensor, probs: Tensor, labels: Tensor) -> None:
        """Add a batch (labels -1 where it must not serve as a peer), oldest entries out."""
        size = len(self.labels)
        n = min(len(labels), size)
        slots = (self.next + torch.arange(n, device=self.labels.device)) % size
        self.stats.index_copy_(0, slots, stats[-n:].detach().float())
        self.probs.index_copy_(0, slots, probs[-n:].detach().float())
        self.labels.index_copy_(0, slots, labels[-n:])
        self.next = (self.next + n) % size


def reference(logits: Tensor, y: Tensor, stats: Tensor | None, *, width: float, smoothing: float,
              standardize: bool = True, bank: PeerBank | None = None) -> Tensor:
    """Alignment targets: p(x_i) where x_i is classified correctly; otherwise a kernel-
    weighted mix of p(x_j) over correct clean x_j of class y_i (in the batch, and in
    ``bank`` if given), by the distance of their feature statistics; a label-smoothed
    one-hot of y_i when there is none.

    float32 under autocast too: the kernel exp(-d^2 / tau) and its mix. The bank's
    statistics are standardised with the batch's mean and spread, so both are measured
    alike."""
    with full_precision(logits.device):
        probs = F.softmax(logits.float(), 1)
        correct = logits.argmax(1) == y
        if stats is None:  # no `if correct.all()` shortcut: it would wait for the GPU every step
            return probs
        stats, banked = stats.float(), None if bank is None else bank.stats
        if standardize:  # z-scores over the batch: distances mean the same on every architecture
            mean, spread = stats.mean(0), stats.std(0, unbiased=False) + 1e-6  # and layer, whatever its scale
            stats = (stats - mean) / spread
            banked = None if banked is None else (banked - mean) / spread
        peers = (stats, probs, correct[None, :] & (y[None, :] == y[:, None]))
        if bank is not None and banked is not None:
            peers = (torch.cat([stats, banked]), torch.cat([probs, bank.probs]),
                     torch.cat([peers[2], bank.labels[None, :] == y[:, None]], 1))
        return _reference(probs, correct, y, stats, peers, width, smoothing)


def _reference(probs: Tensor, correct: Tensor, y: Tensor, stats: Tensor, peers: tuple[Tensor, Tensor, Tensor],
               width: float, smoothing: float) -> Tensor:
    peer_stats, peer_probs, ok = peers
    d2 = torch.cdist(stats, peer_stats).pow(2) / stats.shape[1]
    weights = torch.where(ok, -d2 / width, torch.full_like(d2, float("-inf")))
    has_peer = ok.any(1, keepdim=True)
    mixed = F.softmax(torch.where(has_peer, weights, torch.zeros_like(weights)), 1) @ peer_probs
    k = probs.shape[1]
    fallback = F.one_hot(y, k).float() * (1 - smoothing) + smoothing / k
    refined = torch.where(has_peer, mixed, fallback)
    return torch.where(correct[:, None], probs, refined)


def gradient_misalignment(g_clean: Tensor, g_adv: Tensor) -> Tensor:
    """Mean over examples of 1 - cos(g_clean, g_adv): 0 aligned, 2 opposite; in float32."""
    with full_precision(g_clean.device):
        cos = F.cosine_similarity(g_clean.flatten(1).float(), g_adv.flatten(1).float(), dim=1, eps=1e-12)
    return (1 - cos).mean()


class UADAT(AdversarialDefense[UADATParams]):
    Params = UADATParams
    _layers: tuple[nn.Module, list[tuple[str, nn.Module]]] | None = None
    #: peers from earlier batches of the epoch (``memory`` > 0); the engine saves and clears it
    _bank: PeerBank | None = None

    def epoch_state(self) -> dict[str, Any]:
        bank = self._bank
        return {} if bank is None else {"stats": bank.stats, "probs": bank.probs, "labels": bank.labels, "next": bank.next}

    def restore_epoch_state(self, state: Mapping[str, Any] | None) -> None:
        self._bank = PeerBank(state["stats"], state["probs"], state["labels"], int(state["next"])) if state else None

    def _peer_bank(self, stats: Tensor, classes: int) -> PeerBank | None:
        """The bank, made at the first batch (its sizes are the statistics' and the classes')
        and moved to the batch's device after a resume."""
        if not self.params.memory:
            return None
        bank = self._bank
        if bank is None or bank.stats.shape[1] != stats.shape[1]:
            bank = PeerBank.empty(self.params.memory, stats.shape[1], classes, stats.device)
        elif bank.stats.device != stats.device:
            bank = PeerBank(bank.stats.to(stats.device), bank.probs.to(stats.device), bank.labels.to(stats.device), bank.next)
        self._bank = bank
        return bank

    def feature_layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The model's feature layers, looked up once per model rather than every batch."""
        if self._layers is None or self._layers[0] is not model:
            self._layers = (model, feature_modules(model, self.params.layers))
        return self._layers[1]

    def adversary(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel) -> Tensor:
        """PGD-AT's adversaries (compiled when the engine compiles)."""
        return pgd_adversary(model, x, y, threat, self.params)

    def check_model(self, model: nn.Module, input_shape: tuple[int, int, int]) -> None:
        """Sampling and refinement need per-channel statistics over spatial positions:
        refuse, before training, layers that give tokens (timm ViTs) or a 1x1 map."""
        p = self.params
        if not (p.sampling or p.refine):
            return
        for name, shape in feature_shapes(model, feature_modules(model, p.layers), input_shape).items():
            if len(shape) != 4 or shape[2] * shape[3] < 2:
                raise ConfigError(
                    f"uadat needs convolutional feature maps (N, C, H, W) with more than one position at its "
                    f"feature layers; layer {name!r} gives {tuple(shape)}"
                    f"{' (tokens, as in a vision transformer)' if len(shape) == 3 else ''}: train a convolutional "
                    "architecture, name such layers with defense.layers=[...], or turn sampling and refine off"
                )

    def forward_passes_per_image(self) -> float:
        """An estimate: the attack, a clean forward, M sampled copies trained (3F each);
        the alignment adds the clean input gradient (2F) and a double backward of about
        one more backward (2F) per forward pass in the graph; on a share of the batch, that
        share of it and of its own forward passes."""
        p = self.params
        m = p.samples if p.sampling else 1
        align = 2.0 + 2.0 * (1 + m) if p.align else 0.0
        if p.align and p.align_fraction < 1:  # its own clean and m sampled forwards, on that share
            align = p.align_fraction * (1.0 + m + align)
        return attack_passes(p.steps) + 1.0 + 3.0 * m + align

    def objective(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> LossOutput:
        # eager: torch.compile has no double backward and ignores hooks added after compiling
        with eager_forwards():
            return self._outer_loss(model, x, x_adv, y)

    def _outer_loss(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> LossOutput:
        p = self.params
        layers = self.feature_layers(model) if (p.sampling or p.refine) else []
        shift = p.sampling and p.uncertainty == "shift"
        shared = p.align and p.align_fraction >= 1  # the alignment differentiates the loss's own passes
        x_in = x.detach().requires_grad_(shared)
        with FeatureHooks(layers if p.refine or shift else [], record=True) as clean_hooks, \
                nullcontext() if shared else torch.no_grad():  # otherwise only its softmax is used, detached
            logits = model(x_in)
        stats = torch.cat([torch.cat(s, 1) for s in clean_hooks.stats.values()], 1) if p.refine else None
        bank = self._peer_bank(stats, logits.shape[1]) if stats is not None else None
        target = reference(logits, y, stats, width=p.kernel_width, smoothing=p.smoothing,
                           standardize=p.standardize, bank=bank).detach()
        if bank is not None and stats is not None:  # this batch's correct examples serve the next ones
            correct = logits.detach().argmax(1) == y
            bank.push(stats, F.softmax(logits.detach().float(), 1), torch.where(correct, y, torch.full_like(y, -1)))

        m = p.samples if p.sampling else 1
        xa = x_adv.detach().requires_grad_(shared)
        # which layers resample in this pass, drawn first: a pass that resamples any keeps
        # BatchNorm's running statistics out of it (evaluation never sees such features)
        coins = {name: bool(torch.rand(()) < p.sample_prob) for name, _ in layers} if p.sampling else {}
        sampled = _SampledPass(layers if p.sampling else [], coins, clean_hooks.stats if shift else None, m)
        frozen = any(coins.values()) and not p.sampled_bn_update
        with frozen_batchnorm_statistics(model) if frozen else nullcontext(), sampled.hooks():
            logits_adv = model(xa.repeat(m, 1, 1, 1))
        ys = y.repeat(m)
        ce = F.cross_entropy(logits_adv, ys)
        match = F.kl_div(F.log_softmax(logits_adv, 1), target.repeat(m, 1), reduction="batchmean")
        loss = ce + p.beta * match
        if shared:
            loss = loss + p.align_weight * input_gradient_misalignment((x_in, logits), (xa, logits_adv), y, m)
        elif p.align:
            loss = loss + p.align_weight * self._part_misalignment(model, x, x_adv, y, sampled)
        return LossOutput(loss, logits_adv[: len(y)])

    def _part_misalignment(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, sampled: _SampledPass) -> Tensor:
        """The alignment on the batch's first ``align_fraction`` (a random part: batches are
        shuffled), through its own clean and sampled adversarial passes, resampling the same
        layers as the loss's pass. Their BatchNorm normalises with the part's statistics and
        leaves the running statistics alone: the loss's passes already updated them."""
        k = max(1, math.ceil(self.params.align_fraction * len(y)))
        xs, xas, m = x[:k].detach().requires_grad_(), x_adv[:k].detach().requires_grad_(), sampled.copies
        with frozen_batchnorm_statistics(model):
            logits = model(xs)
            with sampled.part(k).hooks():
                logits_adv = model(xas.repeat(m, 1, 1, 1))
        return input_gradient_misalignment((xs, logits), (xas, logits_adv), y[:k], m)


@dataclass(frozen=True)
class _SampledPass:
    """How the adversarial pass resamples: which layers (``coins``), with which
    uncertainty (the batch spread, or the shift from the ``clean`` statistics of the
    examples it holds), over ``copies`` repeats of the examples."""

    layers: list[tuple[str, nn.Module]]
    coins: dict[str, bool]
    clean: dict[str, tuple[Tensor, Tensor]] | None
    copies: int

    def part(self, k: int) -> _SampledPass:
        """The same resampling for a pass over the first ``k`` examples only."""
        clean = None if self.clean is None else {n: (mu[:k], sigma[:k]) for n, (mu, sigma) in self.clean.items()}
        return _SampledPass(self.layers, self.coins, clean, self.copies)

    def hooks(self) -> FeatureHooks:
        clean = self.clean
        spreads = {name: across_batch if clean is None else shift_from(clean[name], self.copies) for name, _ in self.layers}

        def draw(name: str, h: Tensor) -> Tensor | None:
            return resample(h, spread=spreads[name]) if self.coins[name] else None
        return FeatureHooks(self.layers, transform=draw)


def input_gradient_misalignment(clean: tuple[Tensor, Tensor], adv: tuple[Tensor, Tensor], y: Tensor, copies: int) -> Tensor:
    """1 - cos between the clean and the adversarial input gradients of the cross-entropy,
    each a (input, logits) pair of a pass whose input requires grad; the adversarial
    input was repeated ``copies`` times, so its gradient sums over the sampled copies.
    With its graph, so the alignment trains the weights (a double backward)."""
    scale = attack_loss_scale()  # > 1 under fp16 only; the cosine does not see it
    g_clean, g_adv = torch.autograd.grad(  # one pass over both graphs
        [scale * F.cross_entropy(clean[1], y, reduction="sum"),
         scale * F.cross_entropy(adv[1], y.repeat(copies), reduction="sum")],
        [clean[0], adv[0]], create_graph=True,
    )
    return gradient_misalignment(g_clean, g_adv)
