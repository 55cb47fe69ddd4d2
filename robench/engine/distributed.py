"""Data-parallel training under torchrun: one process per device, one global batch.

``train.batch_size`` stays the *global* batch whatever the number of processes, so a
config means the same experiment on one GPU or eight. Every rank draws the same
global batch (one shared shuffling generator), augments it identically and keeps its
contiguous shard; each rank's loss is weighted by its shard's share, so the gradient
DistributedDataParallel averages equals the gradient of the mean loss over the global
batch, exactly, also for an uneven last batch.

Attacks run through the wrapped module directly (:class:`AttackAwareDDP`): eval-mode
forward passes with frozen weights need no gradient reducer, and bypassing it keeps
DDP's bookkeeping out of the inner maximisation (the TRADES-under-DDP pitfall).
Buffers are not broadcast at every forward pass; BN running statistics are averaged
across ranks once per epoch, before validation and the checkpoint.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from robench.api.errors import ConfigError

#: set by torchrun in every process it starts
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of a global batch of ``n`` (sizes differ by at most one)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def loss_weight(self, local: int, total: int) -> float:
        """Factor on a rank's mean loss so that DDP's gradient average is the global mean's gradient."""
        return local * self.size / total if self.active else 1.0


SINGLE = World()


def world_from_env() -> World:
    """The torchrun environment, or a single process when there is none."""
    if not all(k in os.environ for k in _ENV):
        return SINGLE
    try:
        return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)") from None


def rank_device(world: World, device: torch.device) -> torch.device:
    """This process's device: under torchrun each rank takes the GPU of its local rank;
    a single process keeps the one it was given (``--device cuda:1`` means GPU 1)."""
    if device.type == "cuda" and world.active:
        return torch.device("cuda", world.local_rank)
    return device


def init_process_group(world: World, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on CPU); returns this rank's device."""
    device = rank_device(world, device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # the current device too: memory stats, streams, new tensors
    if world.active and not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=world.size,
            timeout=datetime.timedelta(minutes=60),  # rank 0 alone evaluates between epochs' collectives
        )
    return device


def close_process_group(finished: bool = False) -> None:
    """Leave the process group; after a finished training, all ranks together (a barrier)."""
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


class AttackAwareDDP(DistributedDataParallel):
    """DDP whose eval-mode forward passes (attacks, clean targets) skip the reducer."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.training:
            return self.module(*args, **kwargs)
        return super().forward(*args, **kwargs)


def convert_sync_bn(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """BatchNorm layers that normalise with statistics of the global batch (CUDA only)."""
    if not world.active:
        return model
    if device.type != "cuda":
        raise ConfigError("engine.sync_bn needs CUDA devices (SyncBatchNorm has no CPU kernel)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """``model`` under DDP when several processes train it; unchanged otherwise."""
    if not world.active:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return AttackAwareDDP(model, device_ids=ids, broadcast_buffers=False)


def all_reduce_sum(*tensors: Tensor) -> None:
    """Sum in place across ranks (no-op without a process group)."""
    if dist.is_initialized():
        for t in tensors:
            dist.all_reduce(t)


def average_buffers(model: nn.Module, world: World) -> None:
    """Average floating-point buffers (BN running statistics) across ranks."""
    if not world.active or not dist.is_initialized():
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf)
            buf.div_(world.size)


def all_gather_object(value: Any, world: World) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank (``[value]`` in one process)."""
    if not world.active or not dist.is_initialized():
        return [value]
    box: list[Any] = [None] * world.size
    dist.all_gather_object(box, value)
    return box


def broadcast_object(value: Any, world: World) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not world.active or not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
