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

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robench.api.contracts import Defense, LossOutput, TensorSplit
from robench.api.errors import CheckpointError, PluginLoadError, RobenchError
from robench.api.loggers import EpochLog
from robench.api.perturb import attack_mode, cross_entropy_loss, default_step_size, pgd, random_start
from robench.api.threat import ThreatModel
from robench.core.config import EngineConfig, TrainConfig
from robench.core.progress import NullReporter, Reporter, Task
from robench.core.registry import plugin_origin
from robench.core.seeding import augmentation_seed, make_generator, rank_noise_seed, validation_seed
from robench.engine.batches import iterate_batches, num_batches
from robench.engine.checkpoint import Checkpoint, load_weights, save_checkpoint
from robench.engine.compiled import compile_step_model, eager_if, graphs_released, no_silent_fallback
from robench.engine.distributed import (
    SINGLE,
    World,
    all_gather_object,
    all_reduce_sum,
    average_buffers,
    convert_sync_bn,
    wrap,
)
from robench.engine.loggers import RunLoggers
from robench.engine.precision import Precision
from robench.engine.schedule import learning_rate, warmed_threat
from robench.engine.signals import StopRequest

LAST, BEST = "last.pt", "best.pt"
#: the last.pt before the current one: what a resume falls back to if last.pt is damaged
PREVIOUS = "last.prev.pt"


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


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Any, path: Path | str | None) -> None:
    """Load a saved optimizer state, each tensor in its parameter's memory format.

    A run may resume with another ``engine.channels_last`` than it was saved with; the
    momentum buffers then follow the parameters, as CUDA's fused SGD requires."""
    try:
        optimizer.load_state_dict(state)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its optimizer state does not fit this model ({exc})") from None
    for group in optimizer.param_groups:
        for param in group["params"]:
            slots = optimizer.state.get(param, {})
            for key, value in slots.items():
                if isinstance(value, Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    slots[key] = torch.empty_like(param).copy_(value)  # empty_like keeps param's strides


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
    if not isinstance(out, LossOutput):
        raise PluginLoadError(f"{plugin_origin(defense)}: loss() returned {type(out).__name__}, not robench.api.LossOutput")
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


@dataclass(frozen=True)
class _Generators:
    """The data order's generator (CPU) and augmentation's (on the training device)."""

    order: torch.Generator
    augment: torch.Generator

    @classmethod
    def for_device(cls, order: torch.Generator, device: torch.device, seed: int) -> _Generators:
        if device.type == "cpu":  # one stream, as CPU runs have always drawn it
            return cls(order, order)
        return cls(order, make_generator(augmentation_seed(seed), device))


def _rng_state(gens: _Generators) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "data": gens.order.get_state()}
    if gens.augment is not gens.order:
        state["augment"] = gens.augment.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _rank_part(train_state: Mapping[str, Any], key: str, world: World) -> Any:
    """This rank's saved ``rng`` or ``partial`` epoch.

    A mid-epoch stop under torchrun saves every rank's (they draw different attack
    noise and sum their own metrics); at an epoch's end rank 0's generators suffice,
    as each rank reseeds at the next epoch."""
    saved = train_state.get("world_size")
    if saved is not None and saved != world.size:
        raise CheckpointError(f"this run trained on {saved} process(es); resume it with --nproc {saved}")
    ranks = train_state.get("ranks")
    return ranks[world.rank][key] if ranks else train_state[key]


def _on_cpu(state: Mapping[str, Any]) -> dict[str, Any]:
    """A defense's epoch state as a checkpoint keeps it: its tensors on the CPU."""
    return {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in state.items()}


def _restore_defense(defense: Defense[Any], resume: Checkpoint | None, world: World) -> None:
    """A run stopped mid-epoch gets back the state its defense carried (none in older checkpoints)."""
    state = (resume.train_state or {}) if resume is not None else {}
    if state.get("partial"):
        ranks = state.get("ranks")
        defense.restore_epoch_state((ranks[world.rank] if ranks else state).get("defense") or {})


def _restore_rng(state: Mapping[str, Any], gens: _Generators) -> None:
    torch.set_rng_state(state["torch"])
    gens.order.set_state(state["data"])
    if "augment" in state and gens.augment is not gens.order:
        gens.augment.set_state(state["augment"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainingStopped(RobenchError):
    """SIGINT/SIGTERM stopped training between two steps; ``last.pt`` can finish the run."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class NonFiniteLoss(RobenchError):
    """The training loss became NaN or inf; the last good checkpoint stays, no record is written.

    Its own exit code (3), so that a sweep or a tuning can tell a diverged run, an outcome
    of its settings, from one that failed for any other reason."""

    exit_code = 3


@dataclass
class _Epoch:
    """One epoch's running state; saved mid-epoch when a signal stops training."""

    epoch: int
    order: Tensor
    loss_sum: Tensor
    correct: Tensor
    seen: Tensor
    #: the first step (in the epoch) with a non-finite loss, -1 if none; kept on the device
    bad_step: Tensor
    steps_done: int = 0
    seconds: float = 0.0
    eps: str = ""

    @classmethod
    def fresh(cls, epoch: int, order: Tensor, device: torch.device) -> _Epoch:
        zero = torch.zeros((), device=device, dtype=torch.long)
        return cls(epoch, order, torch.zeros((), device=device), zero.clone(), zero.clone(), zero - 1)

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "order": self.order.cpu(), "loss_sum": self.loss_sum.cpu(),
                "correct": self.correct.cpu(), "seen": self.seen.cpu(), "bad_step": self.bad_step.cpu(),
                "steps_done": self.steps_done, "seconds": self.seconds, "eps": self.eps}

    @classmethod
    def restore(cls, state: Mapping[str, Any], device: torch.device) -> _Epoch:
        tensors = {k: state[k].to(device) for k in ("loss_sum", "correct", "seen", "bad_step")}
        return cls(int(state["epoch"]), state["order"], **tensors, steps_done=int(state["steps_done"]),
                   seconds=float(state["seconds"]), eps=str(state["eps"]))


#: steps between two reads of the non-finite-loss flag (each read waits for the device)
NAN_CHECK_EVERY = 100
#: steps between two agreements on a stop request under DDP (each is a collective)
STOP_CHECK_EVERY_DDP = 10


@dataclass
class _Progress:
    """What training has produced so far; ``last.pt`` saves it and a resume restores it."""

    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float = -math.inf
    elapsed: float = 0.0
    #: the epoch in progress, when a run stopped mid-epoch is resumed
    current: _Epoch | None = None


@dataclass(frozen=True)
class _Job:
    """What this training is: :func:`train`'s arguments, fixed for the whole call."""

    defense: Defense[Any]
    split: TensorSplit
    threat: ThreatModel
    cfg: TrainConfig
    #: draws each epoch's batch order (on the CPU), and augmentation's on a CPU device
    generator: torch.Generator
    augment: Callable[[Tensor, torch.Generator], Tensor] | None
    seed: int
    val_split: TensorSplit | None
    val_batch_size: int
    engine: EngineConfig
    world: World
    device: torch.device


@dataclass
class _RunState:
    """One training call's parts, built once by :func:`_start` and passed to each epoch."""

    job: _Job
    model: nn.Module
    #: the model the defense sees: under DDP and/or compiled (in this order); ``model`` keeps the weights
    step_model: nn.Module
    optimizer: torch.optim.Optimizer
    precision: Precision
    gens: _Generators
    steps: int
    #: this rank's part of a full batch, the one shape compiled graphs take
    full_shard: int
    files: dict[str, Path]
    saver: _Saver | None
    progress: _Progress
    loggers: RunLoggers


def _start(
    model: nn.Module, job: _Job, run_dir: Path | None, meta: Mapping[str, Any] | None,
    resume: Checkpoint | None, loggers: RunLoggers | None,
) -> _RunState:
    """Prepare the model, optimizer, precision and generators, restoring ``resume`` if given."""
    cfg, engine, world, device = job.cfg, job.engine, job.world, job.device
    if engine.channels_last:
        model.to(memory_format=torch.channels_last)
    if engine.sync_bn:
        model = convert_sync_bn(model, world, device)
    optimizer = make_optimizer(model, cfg, device)
    precision = Precision(cfg.precision, device)
    gens = _Generators.for_device(job.generator, device, job.seed)
    step_model = wrap(model, world, device)
    if engine.compile:
        step_model = compile_step_model(step_model)
    full = world.shard(min(cfg.batch_size, len(job.split)))
    progress = _Progress()
    if resume is not None:
        progress = _resumed(model, optimizer, precision, gens, resume, world, device)
    files = {"last": run_dir / LAST, "best": run_dir / BEST} if run_dir else {}
    saver = _Saver(files, model, optimizer, gens, precision, meta or {}, world.size) if run_dir and world.is_main else None
    return _RunState(job, model, step_model, optimizer, precision, gens,
                     num_batches(len(job.split), cfg.batch_size), full.stop - full.start, files, saver, progress,
                     loggers if loggers is not None and world.is_main else RunLoggers())


def _resumed(
    model: nn.Module, optimizer: torch.optim.Optimizer, precision: Precision, gens: _Generators,
    resume: Checkpoint, world: World, device: torch.device,
) -> _Progress:
    """Load a checkpoint's weights, optimizer, generators and scaler; return its progress."""
    state = resume.train_state or {}
    load_weights(model, resume.state_dict, resume.path or "the checkpoint to resume")
    load_optimizer_state(optimizer, state.get("optimizer"), resume.path)
    _restore_rng(_rank_part(state, "rng", world), gens)
    progress = _Progress([EpochStats(**h) for h in state["history"]], state["best_epoch"], state["best_score"],
                         float(state.get("elapsed_s", 0.0)))
    precision.load_state_dict(state.get("grad_scaler") or {})
    if state.get("partial"):
        progress.current = _Epoch.restore(_rank_part(state, "partial", world), device)
    return progress


def train(
    model: nn.Module,
    defense: Defense[Any],
    split: TensorSplit,
    threat: ThreatModel,
    cfg: TrainConfig,
    *,
    device: torch.device,
    generator: torch.Generator,
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    reporter: Reporter | None = None,
    val_split: TensorSplit | None = None,
    val_batch_size: int = 512,
    seed: int = 0,
    run_dir: Path | None = None,
    meta: Mapping[str, Any] | None = None,
    resume: Checkpoint | None = None,
    engine: EngineConfig | None = None,
    world: World = SINGLE,
    loggers: RunLoggers | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``cfg.epochs`` epochs (from ``resume``'s epoch and step on).

    ``generator`` (on the CPU) draws each epoch's batch order; ``augment(x, g)`` draws
    from a generator on ``device`` (the same one on a CPU), so that no step waits for
    a copy from the host. Both states are saved in ``last.pt``.

    With ``run_dir``, writes ``last.pt`` (the previous one kept as ``last.prev.pt``)
    and ``best.pt`` there after every epoch (rank 0 only), then tells ``loggers``
    (started by the caller; rank 0's only) of the epoch, and of every
    ``engine.log_every``-th step's loss if one of them takes steps; ``meta``
    (``config``, ``run_id``) goes into the checkpoints. SIGINT/SIGTERM stop at the next
    step boundary with a mid-epoch ``last.pt`` (:class:`TrainingStopped`); a NaN/inf
    loss stops without saving (:class:`NonFiniteLoss`). Every rank of ``world`` calls
    this with the same arguments.
    """
    reporter = reporter or NullReporter()
    job = _Job(defense, split, threat, cfg, generator, augment, seed, val_split, val_batch_size,
               engine or EngineConfig(), world, device)
    run = _start(model, job, run_dir, meta, resume, loggers)
    _restore_defense(defense, resume, world)
    done = run.progress
    task = reporter.task("train", cfg.epochs * run.steps)
    task.advance(len(done.history) * run.steps + (done.current.steps_done if done.current else 0))
    with StopRequest() as stop, graphs_released(job.engine.compile), no_silent_fallback(job.engine.compile):
        for epoch in range(len(done.history) + 1, cfg.epochs + 1):
            start = time.perf_counter()
            ep = _train_epoch(run, epoch, start, stop, task)
            _end_epoch(run, ep, start)
            task.advance(0, epoch=f"{epoch}/{cfg.epochs}", val=_val_label(done.history[-1]))
        if stop.signum is not None:  # arrived after the last step: last.pt holds the finished training
            raise TrainingStopped(f"stopped by {stop.name} after training, before evaluation", stop.signum)
    task.done()
    if job.engine.channels_last:  # evaluation and users get the usual layout back
        run.model.to(memory_format=torch.contiguous_format)
    return TrainResult(done.history, done.best_epoch, run.files)


def _val_label(stats: EpochStats) -> str:
    return f"{stats.val_clean:.1f}/{stats.val_pgd:.1f}" if stats.val_pgd is not None else "-"


def _train_epoch(run: _RunState, epoch: int, start: float, stop: StopRequest, task: Task) -> _Epoch:
    """The steps of one epoch (from where a stopped one left off); metrics stay on the device."""
    job, steps = run.job, run.steps
    cfg, world, augment = job.cfg, job.world, job.augment
    run.step_model.train()  # and the model it wraps
    if world.active and run.progress.current is None:  # attack noise differs per rank, repeatably
        torch.manual_seed(rank_noise_seed(job.seed, epoch, world.rank))
    if run.progress.current is None:
        run.progress.current = _Epoch.fresh(epoch, torch.randperm(len(job.split), generator=job.generator), job.device)
        job.defense.restore_epoch_state(None)  # what earlier batches left belongs to the last epoch
    ep, gens = run.progress.current, run.gens
    batches = iterate_batches(job.split, cfg.batch_size, device=job.device,
                              augment=None if augment is None else lambda x: augment(x, gens.augment),
                              indices=ep.order[ep.steps_done * cfg.batch_size:])
    for i, (x, y) in enumerate(batches, start=ep.steps_done):
        step = (epoch - 1) * steps + i
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step, steps)
        step_threat = warmed_threat(job.threat, cfg, step, steps)
        ep.eps = step_threat.eps
        if not world.active or len(y) >= world.size:  # else a last batch too small to share
            loss = _step(run, x, y, step_threat, ep, i)
            if run.loggers.step_due(step + 1):  # the one place a step waits for the device, when asked
                run.loggers.step(step + 1, {"loss": float(loss), "lr": run.optimizer.param_groups[0]["lr"]})
        ep.steps_done = i + 1
        task.advance(1, epoch=f"{epoch}/{cfg.epochs}")
        if ep.steps_done % NAN_CHECK_EVERY == 0:
            _check_finite(run, ep)
        stop_check = not world.active or ep.steps_done % STOP_CHECK_EVERY_DDP == 0
        if ep.steps_done < steps and stop_check and stop.agreed(world, job.device):
            ep.seconds += time.perf_counter() - start
            _stop_mid_epoch(run, ep, stop)
    _check_finite(run, ep)
    return ep


def _stop_mid_epoch(run: _RunState, ep: _Epoch, stop: StopRequest) -> None:
    """Save a mid-epoch ``last.pt`` with each rank's attack noise, metrics and defense state so far, then stop."""
    mine = {"rng": _rng_state(run.gens), "partial": ep.state(), "defense": _on_cpu(run.job.defense.epoch_state())}
    ranks = all_gather_object(mine, run.job.world)
    if run.saver is not None:
        run.saver.save_partial(run.progress, ranks)
    raise TrainingStopped(
        f"stopped by {stop.name} after step {ep.steps_done} of {run.steps} in epoch {ep.epoch}", stop.signum or 15
    )


def _end_epoch(run: _RunState, ep: _Epoch, start: float) -> None:
    """Reduce the epoch's metrics, validate, pick the best epoch and save (rank 0)."""
    job, done = run.job, run.progress
    all_reduce_sum(ep.loss_sum, ep.correct, ep.seen)
    average_buffers(run.model, job.world)
    n_seen = max(int(ep.seen.item()), 1)
    val_clean = val_pgd = None
    if job.val_split is not None and len(job.val_split):
        val_clean, val_pgd = validation_accuracy(
            run.model, job.val_split, job.threat, steps=job.cfg.val_steps, batch_size=job.val_batch_size,
            device=job.device, generator=make_generator(validation_seed(job.seed, ep.epoch), job.device),
            world=job.world,
        )
    seconds = ep.seconds + time.perf_counter() - start
    done.elapsed += seconds
    first_lr = learning_rate(job.cfg, (ep.epoch - 1) * run.steps, run.steps)
    stats = EpochStats(ep.epoch, first_lr, ep.loss_sum.item() / n_seen, 100.0 * ep.correct.item() / n_seen,
                       val_clean, val_pgd, round(seconds, 3), ep.eps or job.threat.eps)
    done.history.append(stats)
    done.current = None
    score = getattr(stats, job.defense.selection_metric, None)
    improved = score is not None and score > done.best_score
    if improved and score is not None:
        done.best_epoch, done.best_score = ep.epoch, score
    if run.saver is not None:
        run.saver.save_epoch(done, improved)
    metrics = {k: v for k, v in asdict(stats).items() if k not in ("epoch", "eps")}
    run.loggers.epoch(EpochLog(ep.epoch, metrics, tuple(asdict(h) for h in done.history), done.best_epoch))


def _step(run: _RunState, x: Tensor, y: Tensor, threat: ThreatModel, ep: _Epoch, index: int) -> Tensor:
    """One step on this rank's shard; its metrics are added to ``ep`` on the device, its loss returned there.

    ``threat``: this step's (below the run's during eps warm-up); ``index``: the step within the epoch."""
    world, engine = run.job.world, run.job.engine
    weight = 1.0
    if world.active:
        part = world.shard(len(y))
        weight = world.loss_weight(part.stop - part.start, len(y))
        x, y = x[part], y[part]
    if engine.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with eager_if(engine.compile and y.shape[0] != run.full_shard):  # an epoch's smaller last batch
        out = train_step(run.step_model, run.job.defense, run.optimizer, x, y, threat, run.precision, weight)
    loss = out.loss.detach().float()
    ep.loss_sum += loss * y.shape[0]
    ep.correct += (out.logits.detach().argmax(1) == y).sum()
    ep.seen += y.shape[0]
    first = (ep.bad_step < 0) & ~torch.isfinite(loss)
    ep.bad_step.copy_(torch.where(first, torch.full_like(ep.bad_step, index), ep.bad_step))
    return loss


def _check_finite(run: _RunState, ep: _Epoch) -> None:
    """Stop on a NaN/inf loss: name the epoch and step, and the checkpoint that stays good.

    Under DDP every rank stops when any rank saw one (they all call this at the same step)."""
    world = run.job.world
    if world.active:
        anywhere = (ep.bad_step >= 0).long()
        all_reduce_sum(anywhere)
        if not anywhere.item():
            return
    bad = int(ep.bad_step.item())
    if bad < 0 and not world.active:
        return
    last = run.files.get("last")
    kept = (f"the last good checkpoint is {last} (the end of epoch {ep.epoch - 1})"
            if last is not None and last.is_file() else "no checkpoint was saved before it")
    where = f"step {bad + 1} of {run.steps}" if bad >= 0 else "a step of another process"
    raise NonFiniteLoss(
        f"the training loss became NaN or inf in epoch {ep.epoch}, {where}; stopped without "
        f"writing a record; {kept}. Try a lower train.lr, or bf16/fp32 instead of fp16"
    )


class _Saver:
    """Writes a run's checkpoints and epoch log (rank 0); each write is atomic."""

    def __init__(self, files: Mapping[str, Path], model: nn.Module, optimizer: torch.optim.Optimizer,
                 gens: _Generators, precision: Precision, meta: Mapping[str, Any], world_size: int) -> None:
        self.files, self.model, self.optimizer = files, model, optimizer
        self.gens, self.precision, self.meta, self.world_size = gens, precision, meta, world_size

    def _train_state(self, progress: _Progress, ranks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "rng": _rng_state(self.gens),
            "world_size": self.world_size,
            #: each rank's {"rng", "partial"} after a mid-epoch stop under torchrun
            "ranks": ranks if ranks is not None and len(ranks) > 1 else None,
            "history": [asdict(h) for h in progress.history],
            "best_epoch": progress.best_epoch,
            "best_score": progress.best_score,
            "elapsed_s": progress.elapsed,
            "grad_scaler": self.precision.state_dict(),
            "partial": ranks[0]["partial"] if ranks else None,
            "defense": ranks[0].get("defense") if ranks else None,
        }

    def _save_last(self, epoch: int, metrics: dict[str, Any], train_state: dict[str, Any]) -> None:
        """The new last.pt, the old one kept as last.prev.pt in case the new one is ever damaged."""
        last = self.files["last"]
        if last.is_file():
            os.replace(last, last.with_name(PREVIOUS))
        save_checkpoint(last, self.model, metrics=metrics, train_state=train_state, epoch=epoch, **self._common())

    def _common(self) -> dict[str, Any]:
        return {"config": dict(self.meta.get("config", {})), "run_id": str(self.meta.get("run_id", ""))}

    def save_epoch(self, progress: _Progress, improved: bool) -> None:
        """best.pt (if improved), then last.pt, at the end of ``progress``'s last epoch."""
        stats = progress.history[-1]
        metrics = {"val_clean": stats.val_clean, "val_pgd": stats.val_pgd}
        if improved:
            save_checkpoint(self.files["best"], self.model, metrics=metrics, epoch=stats.epoch, **self._common())
        self._save_last(stats.epoch, metrics, self._train_state(progress, None))

    def save_partial(self, progress: _Progress, ranks: list[dict[str, Any]]) -> None:
        """last.pt in the middle of an epoch: resuming finishes that epoch as if never stopped.

        ``ranks``: every rank's generator states and epoch so far (one entry in one process)."""
        self._save_last(len(progress.history), {}, self._train_state(progress, ranks))
