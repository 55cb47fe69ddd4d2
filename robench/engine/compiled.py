"""torch.compile for the training step: a bounded set of graphs, and no silent fallback.

The order is the supported one: the model is wrapped in DDP first and the wrapper is
compiled, so that TorchDynamo's DDP optimizer splits graphs at the gradient buckets
and the all-reduce overlaps the backward pass.

Graphs are compiled for one batch shape only (``dynamic=False``): every full training
batch has the same shape, and the one smaller last batch of an epoch runs eagerly
instead of compiling a second set of graphs or a dynamic-shape one. The modes the
defenses use (training forward, eval-mode attack forwards, with and without gradients)
are a handful of graphs, far below Dynamo's recompile limit; should a plugin still
exceed it, training stops with an error instead of continuing eagerly without a word,
as Dynamo otherwise does. Validation and the final evaluation run eagerly: AutoAttack
shrinks its batches as points are broken, which would recompile at every size.
"""
from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import cast

import torch
from torch import nn

from robench.api.errors import RobenchError
from robench.engine.backend import sync_inductor_determinism


class RecompileLimit(RobenchError):
    """torch.compile would have fallen back to eager: the step's graphs are not bounded."""


def compile_step_model(model: nn.Module) -> nn.Module:
    """``model`` (already under DDP when several processes train) compiled for one batch shape."""
    sync_inductor_determinism()
    return cast(nn.Module, torch.compile(model, dynamic=False))  # an OptimizedModule


@contextlib.contextmanager
def no_silent_fallback(active: bool) -> Iterator[None]:
    """While inside, hitting Dynamo's recompile limit raises :class:`RecompileLimit`."""
    if not active:
        yield
        return
    limit = torch._dynamo.config.recompile_limit
    try:
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            yield
    except torch._dynamo.exc.FailOnRecompileLimitHit as exc:
        raise RecompileLimit(
            f"torch.compile recompiled the training step more than {limit} times ({str(exc).splitlines()[0]}); "
            "a plugin's forward pass changes with every call. Train without --compile"
        ) from None


def eager_if(odd_shape: bool) -> contextlib.AbstractContextManager[None]:
    """Eager forward passes for a batch of another shape than the compiled graphs'."""
    return torch.compiler.set_stance("force_eager") if odd_shape else contextlib.nullcontext()


@contextlib.contextmanager
def graphs_released(active: bool) -> Iterator[None]:
    """On leaving, the compiled graphs are dropped.

    Dynamo's caches keep the compiled module alive, and with it DDP's reducer and the
    process group it holds; released here, the group is gone before the process exits
    instead of being torn down with the interpreter."""
    try:
        yield
    finally:
        if active:
            torch._dynamo.reset()
            gc.collect()
