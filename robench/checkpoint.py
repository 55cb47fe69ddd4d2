"""Model checkpoints: weights plus the resolved config that built them.

Saved atomically; loaded with ``torch.load(weights_only=True)``, which unpickles
tensors and plain containers only, so a checkpoint from an untrusted source cannot
run code. The config inside lets ``robench eval`` rebuild the exact model.

A run keeps two: ``best.pt`` (highest validation PGD accuracy, with those metrics)
and ``last.pt``, which also carries the training state that ``--resume`` needs
(optimizer, RNG states, epoch, history): plain tensors and containers as well.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robench.errors import UserError
from robench.io import atomic_write_bytes

FORMAT = "robench-checkpoint"
VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    run_id: str
    epoch: int
    #: validation metrics at this epoch (``val_clean``, ``val_pgd``), when known
    metrics: dict[str, Any] | None = None
    #: what resuming needs (only in ``last.pt``): optimizer, RNG states, history
    train_state: dict[str, Any] | None = None


def save_checkpoint(
    path: Path,
    model: nn.Module,
    *,
    config: dict[str, Any],
    run_id: str,
    epoch: int,
    metrics: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "run_id": run_id,
        "epoch": epoch,
        "config": config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metrics": metrics,
        "train_state": train_state,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a robench checkpoint; anything else is refused with one clear line."""
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch's advice to retry unsafely is not for our users
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickler_detail(str(exc))
        if "global" in detail.lower() or "class" in detail.lower():
            raise UserError(
                f"refusing to load {path}: it holds objects other than tensors and plain data, "
                f"and unpickling them could run code ({detail})"
            ) from None
        raise UserError(f"cannot read checkpoint {path}: not a PyTorch file ({detail})") from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise UserError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(
            f"{path} is not a robench checkpoint (no model config inside); "
            "robench eval evaluates checkpoints written by robench run"
        )
    if payload.get("version") != VERSION:
        raise UserError(f"{path}: checkpoint version {payload.get('version')!r}, this robench reads {VERSION}")
    return Checkpoint(
        payload["state_dict"], payload["config"], str(payload["run_id"]), int(payload["epoch"]),
        payload.get("metrics"), payload.get("train_state"),
    )


def _unpickler_detail(message: str) -> str:
    """The informative part of torch's weights-only error (e.g. 'Unsupported global: ...')."""
    _, found, rest = message.partition("WeightsUnpickler error:")
    text = rest if found else message
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else "unpickling failed")[:200]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
