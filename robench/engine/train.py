"""The training loop: SGD, a per-step schedule, a defense's batch loss, per-epoch validation.

After every epoch the model is scored on the held-out validation split (clean and
PGD accuracy), ``best.pt`` is replaced when the defense's selection metric improves
(PGD accuracy, the robust-overfitting convention of Rice et al.; clean accuracy for
standard training), and ``last.pt`` is written with everything a
resume needs, so a crash loses at most the epoch in progress. Metrics accumulate on
the device and are read once per epoch, so the loop does not synchronise with the
GPU at every step.

How the step is computed (``EngineConfig``: channels-last, torch.compile) and how
many processes share it (:mod:`robench.engine.distributed`) do not change what is
computed; ``train.precision`` does, and is part of the experiment.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robench.api import Defense, LossOutput, TensorSplit
from robench.checkpoint import Checkpoint, save_checkpoint
from robench.config import EngineConfig, TrainConfig
from robench.engine.batches import iterate_batches, num_batches
from robench.engine.distributed import SINGLE, World, all_reduce_sum, average_buffers, convert_sync_bn, wrap
from robench.engine.precision import Precision
from robench.engine.schedule import learning_rate, warmed_threat
from robench.errors import RobenchError
from robench.io import atomic_write_text
from robench.perturb import attack_mode, cross_entropy_loss, default_step_size, pgd, random_start
from robench.progress import NullReporter, Reporter
from robench.threat import ThreatModel

LAST, BEST, LOG = "last.pt", "best.pt", "log.jsonl"


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    lr: float
    loss: float
    #: training accuracy on the logits the defense returns (adversarial ones for AT)
    accuracy: float
    #: clean and PGD accuracy on the validation split; None without one
    val_clean: float | None
    val_pgd: float | None
    seconds: float
    #: the training eps at the end of the epoch (below the threat's during eps warm-up)
    eps: str


@dataclass
class TrainResult:
    history: list[EpochStats]
    best_epoch: int | None = None
    #: files written when a run folder was given
    files: dict[str, Path] = field(default_factory=dict)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device | None = None) -> torch.optim.Optimizer:
    """SGD; on CUDA the fused kernel (one launch for all parameters), elsewhere torch's default."""
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov, fused=True if device is not None and device.type == "cuda" else None,
    )


def train_step(
    model: nn.Module, defense: Defense, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, threat: ThreatModel,
    precision: Precision | None = None, loss_weight: float = 1.0,
) -> LossOutput:
    """One optimisation step on a batch: the defense's loss (attack included) under the
    precision's autocast, then backward and SGD (through the fp16 loss scaler).

    ``loss_weight`` scales what is differentiated, not the loss returned (a rank's
    share of a global batch under DDP). The unit ``robench bench`` times against the
    reference loops in ``benchmarks/``."""
    precision = precision or Precision("fp32", x.device)
    with precision.autocast():
        out = defense.loss(model, x, y, threat)
    optimizer.zero_grad(set_to_none=True)
    precision.step(out.loss * loss_weight if loss_weight != 1.0 else out.loss, optimizer)
    return out


def validation_accuracy(
    model: nn.Module, split: TensorSplit, threat: ThreatModel, *, steps: int, batch_size: int,
    device: torch.device, generator: torch.Generator, world: World = SINGLE,
) -> tuple[float, float]:
    """Clean and PGD-``steps`` accuracy (%) in eval mode: CE, random start, 2.5 eps/steps.

    Each rank scores its shard of the split; counts stay on the device, are summed
    across ranks and read once at the end."""
    clean = torch.zeros((), device=device, dtype=torch.long)
    robust = torch.zeros((), device=device, dtype=torch.long)
    mine = torch.arange(len(split))[world.shard(len(split))]
    with attack_mode(model):
        for x, y in iterate_batches(split, batch_size, device=device, indices=mine):
            with torch.no_grad():
                clean += (model(x).argmax(1) == y).sum()
            start = random_start(x, threat, generator)
            x_adv = pgd(model, x, threat, cross_entropy_loss(y), steps=steps,
                        step_size=default_step_size(threat.value, steps), start=start)
            with torch.no_grad():
                robust += (model(x_adv).argmax(1) == y).sum()
    all_reduce_sum(clean, robust)
    return 100.0 * clean.item() / len(split), 100.0 * robust.item() / len(split)


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "data": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: Mapping[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(
    model: nn.Module,
    defense: Defense,
    split: TensorSplit,
    threat: ThreatModel,
    cfg: TrainConfig,
    *,
    device: torch.device,
    generator: torch.Generator,
    augment: Callable[[Tensor], Tensor] | None = None,
    reporter: Reporter | None = None,
    val_split: TensorSplit | None = None,
    val_batch_size: int = 512,
    seed: int = 0,
    run_dir: Path | None = None,
    meta: Mapping[str, Any] | None = None,
    resume: Checkpoint | None = None,
    engine: EngineConfig | None = None,
    world: World = SINGLE,
) -> TrainResult:
    """Train ``model`` in place for ``cfg.epochs`` epochs (from ``resume``'s epoch on).

    With ``run_dir``, writes ``last.pt``, ``best.pt`` and ``log.jsonl`` there after
    every epoch (rank 0 only); ``meta`` (``config``, ``run_id``) goes into the checkpoints.
    Every rank of ``world`` calls this with the same arguments.
    """
    reporter = reporter or NullReporter()
    engine = engine or EngineConfig()
    if engine.channels_last:
        model.to(memory_format=torch.channels_last)
    if engine.sync_bn:
        model = convert_sync_bn(model, world, device)
    optimizer = make_optimizer(model, cfg, device)
    precision = Precision(cfg.precision, device)
    # the model the defense sees: compiled and/or under DDP; ``model`` keeps the weights
    step_model = wrap(torch.compile(model) if engine.compile else model, world, device)
    steps = num_batches(len(split), cfg.batch_size)
    history: list[EpochStats] = []
    best_epoch, best_score, elapsed = None, -math.inf, 0.0
    if resume is not None:
        state = resume.train_state or {}
        model.load_state_dict(resume.state_dict)
        optimizer.load_state_dict(state["optimizer"])
        _restore_rng(state["rng"], generator)
        history = [EpochStats(**h) for h in state["history"]]
        best_epoch, best_score = state["best_epoch"], state["best_score"]
        elapsed = float(state.get("elapsed_s", 0.0))
        precision.load_state_dict(state.get("grad_scaler") or {})
    files = {"last": run_dir / LAST, "best": run_dir / BEST, "log": run_dir / LOG} if run_dir else {}
    task = reporter.task("train", cfg.epochs * steps)
    task.advance(len(history) * steps)
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        model.train()
        step_model.train()
        if world.active:  # attack noise differs per rank, repeatably (also after a resume)
            torch.manual_seed((seed * 1_000_003 + epoch) * 1009 + world.rank)
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = torch.zeros((), device=device, dtype=torch.long)
        first_lr, eps = learning_rate(cfg, (epoch - 1) * steps, steps), threat.eps
        batches = iterate_batches(
            split, cfg.batch_size, device=device, shuffle=True, generator=generator, augment=augment
        )
        for i, (x, y) in enumerate(batches):
            step = (epoch - 1) * steps + i
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step, steps)
            step_threat = warmed_threat(threat, cfg, step, steps)
            weight = 1.0
            if world.active:
                if len(y) < world.size:  # a last batch too small to give every rank an image
                    task.advance(1, epoch=f"{epoch}/{cfg.epochs}")
                    continue
                part = world.shard(len(y))
                weight = world.loss_weight(part.stop - part.start, len(y))
                x, y = x[part], y[part]
            if engine.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            out = train_step(step_model, defense, optimizer, x, y, step_threat, precision, weight)
            loss_sum += out.loss.detach().float() * y.shape[0]
            correct += (out.logits.detach().argmax(1) == y).sum()
            seen += y.shape[0]
            eps = step_threat.eps
            task.advance(1, epoch=f"{epoch}/{cfg.epochs}")
        all_reduce_sum(loss_sum, correct, seen)
        average_buffers(model, world)
        n_seen = max(int(seen.item()), 1)
        loss = loss_sum.item() / n_seen
        if not math.isfinite(loss):
            raise RobenchError(f"training loss became {loss} in epoch {epoch}; stopping")
        val_clean = val_pgd = None
        if val_split is not None and len(val_split):
            val_clean, val_pgd = validation_accuracy(
                model, val_split, threat, steps=cfg.val_steps, batch_size=val_batch_size, device=device,
                generator=torch.Generator().manual_seed(seed * 100_003 + epoch), world=world,
            )
        seconds = time.perf_counter() - start
        elapsed += seconds
        stats = EpochStats(epoch, first_lr, loss, 100.0 * correct.item() / n_seen,
                           val_clean, val_pgd, round(seconds, 3), eps)
        history.append(stats)
        score = getattr(stats, defense.selection_metric, None)
        improved = score is not None and score > best_score
        if improved:
            best_epoch, best_score = epoch, score
        task.advance(0, epoch=f"{epoch}/{cfg.epochs}",
                     val=f"{val_clean:.1f}/{val_pgd:.1f}" if val_pgd is not None else "-")
        if run_dir is not None and world.is_main:
            _save_epoch(files, model, optimizer, generator, history, best_epoch, best_score,
                        elapsed, improved, meta or {}, precision)
    task.done()
    if engine.channels_last:  # evaluation and users get the usual layout back
        model.to(memory_format=torch.contiguous_format)
    return TrainResult(history, best_epoch, files)


def _save_epoch(
    files: Mapping[str, Path], model: nn.Module, optimizer: torch.optim.Optimizer,
    generator: torch.Generator, history: list[EpochStats], best_epoch: int | None,
    best_score: float, elapsed: float, improved: bool, meta: Mapping[str, Any], precision: Precision,
) -> None:
    """best.pt (if improved), then last.pt, then the log: each write is atomic."""
    stats = history[-1]
    common = {"config": dict(meta.get("config", {})), "run_id": str(meta.get("run_id", "")), "epoch": stats.epoch}
    metrics = {"val_clean": stats.val_clean, "val_pgd": stats.val_pgd}
    if improved:
        save_checkpoint(files["best"], model, metrics=metrics, **common)
    save_checkpoint(files["last"], model, metrics=metrics, train_state={
        "optimizer": optimizer.state_dict(),
        "rng": _rng_state(generator),
        "history": [asdict(h) for h in history],
        "best_epoch": best_epoch,
        "best_score": best_score,
        "elapsed_s": elapsed,
        "grad_scaler": precision.state_dict(),
    }, **common)
    lines = [json.dumps({**asdict(h), "best": h.epoch == best_epoch}) for h in history]
    atomic_write_text(files["log"], "\n".join(lines) + "\n")
