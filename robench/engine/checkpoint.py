"""Model checkpoints: weights plus the resolved config that built them.

Saved atomically; loaded with ``torch.load(weights_only=True)``, which unpickles
tensors and plain containers only, so a checkpoint from an untrusted source cannot
run code. The config inside lets ``robench eval`` rebuild the exact model.

A run keeps two: ``best.pt`` (highest validation PGD accuracy, with those metrics)
and ``last.pt``, which also carries the training state that ``--resume`` needs
(optimizer, RNG states, epoch, history): plain tensors and containers as well.

Weights go into a model through :func:`load_weights`, which says in one line why they
do not fit (the first mismatched tensor, what the checkpoint was built for) instead
of torch's multi-line list.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robench.api.errors import CheckpointError, one_line
from robench.api.io import atomic_write_bytes

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
    #: the file it was read from, for messages about it (None when built in memory)
    path: Path | None = None


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
    """Read a robench checkpoint; anything else is refused with one line naming the file.

    The file may come from anywhere, so every way it can be wrong (missing, cut short,
    not a PyTorch file, carrying code, not written by robench, fields of the wrong type)
    is a :class:`CheckpointError`, never a traceback from deep inside torch.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    payload = _read(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a robench checkpoint (no model config inside); "
            "robench eval evaluates checkpoints written by robench run"
        )
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')!r}, this robench reads {VERSION}")
    _check_fields(payload, path)
    return Checkpoint(
        payload["state_dict"], payload["config"], str(payload["run_id"]), int(payload["epoch"]),
        payload.get("metrics"), payload.get("train_state"), path,
    )


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Weights robench did not save: what ``torch.save(model.state_dict())`` writes (the
    official TRADES and MART checkpoints), also inside a ``{"state_dict": ...}`` or
    ``{"model": ...}`` wrapper, or a ``.safetensors`` file. Read weights-only like a
    checkpoint; a robench checkpoint is pointed to ``--checkpoint``, which restores its
    config too."""
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    payload = _read_safetensors(path) if path.suffix == SAFETENSORS else _read(path)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        raise CheckpointError(f"{path} is a robench checkpoint; evaluate it with robench eval --checkpoint {path}")
    if isinstance(payload, dict) and not any(isinstance(v, torch.Tensor) for v in payload.values()):
        inner = next((payload[k] for k in ("state_dict", "model") if isinstance(payload.get(k), dict)), None)
        payload = inner if inner is not None else payload
    if not isinstance(payload, dict) or not payload or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()
    ):
        raise CheckpointError(f"{path} holds no state dict (a mapping of parameter names to tensors)")
    return payload


SAFETENSORS = ".safetensors"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file: tensors and nothing else by design, so nothing in it can run."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read safetensors file {path} ({' '.join(str(exc).split())})") from None


def _read(path: Path) -> Any:
    """``torch.load`` in weights-only mode, its many failure modes turned into one line."""
    try:
        with warnings.catch_warnings():  # torch's advice to retry unsafely is not for our users
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        code = _blocked_global(str(exc))
        if code is not None:
            raise CheckpointError(
                f"refusing to load {path}: it holds objects other than tensors and plain data "
                f"({code}), and unpickling them could run code; robench never does"
            ) from None
        detail = _unpickler_detail(str(exc))
        raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch file, or a damaged one ({detail})") from None
    except EOFError:
        raise CheckpointError(f"cannot read checkpoint {path}: the file ends early (empty or truncated)") from None
    except RuntimeError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {_runtime_detail(str(exc))}") from None
    except Exception as exc:  # a damaged file trips all sorts of errors inside torch.load
        detail = one_line(f"{type(exc).__name__}: {exc}")
        raise CheckpointError(f"cannot read checkpoint {path}: the file is damaged ({detail})") from None


#: torch names the forbidden callable as ``GLOBAL module.name`` (blocked module or
#: unsupported global); that is the one fact worth showing.
_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")


def _blocked_global(message: str) -> str | None:
    """``references posix.system`` when torch refused a callable, else None."""
    match = _GLOBAL.search(message)
    return f"it references {match[1]}" if match else None


def _unpickler_detail(message: str) -> str:
    """The informative part of torch's weights-only error (e.g. 'Unsupported operand 110')."""
    _, found, rest = message.partition("WeightsUnpickler error:")
    text = rest if found else message
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else "unpickling failed")[:200]


def _runtime_detail(message: str) -> str:
    """torch's reader errors, minus the paragraph of advice miniz appends to each."""
    if "zip archive" in message or "PytorchStreamReader" in message:
        first = message.split(". ")[0].strip()
        return f"the file is truncated or damaged ({first[:200]})"
    if "magic number" in message:
        return "not a PyTorch file (it does not start like one)"
    return f"the file is damaged ({one_line(message)[:200]})"


def _check_fields(payload: dict[str, Any], path: Path) -> None:
    """The fields robench relies on have the right types (a damaged or hand-edited file may not)."""
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path}: damaged checkpoint: 'state_dict' is not a mapping of names to tensors")
    expected: dict[str, type | tuple[type, ...]] = {"config": dict, "run_id": (str, int), "epoch": int}
    for key, kind in expected.items():
        value = payload.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            what = "missing" if key not in payload else f"a {type(value).__name__}"
            raise CheckpointError(f"{path}: damaged checkpoint: {key!r} is {what}")
    for key in ("metrics", "train_state"):
        if payload.get(key) is not None and not isinstance(payload[key], dict):
            raise CheckpointError(f"{path}: damaged checkpoint: {key!r} is {type(payload[key]).__name__}")


def load_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: Path | str, *, context: str = ""
) -> None:
    """Load ``state_dict`` into ``model`` (strictly), or say in one line why it does not fit.

    torch's own error lists every mismatched tensor over many lines; someone who gave
    the wrong checkpoint, or asked for another width or dataset, needs the first
    mismatch and, in ``context``, what the checkpoint was built for. Shapes are
    compared before anything is copied, so a shape mismatch leaves ``model`` untouched;
    names are left to ``load_state_dict``, which runs the architectures' key adapters
    (reference checkpoints with other key names).
    """
    mine = model.state_dict()
    detail = _shape_mismatch(mine, state_dict)
    if detail is None:
        try:
            model.load_state_dict(state_dict)
            return
        except RuntimeError as exc:  # names that differ, or values torch cannot copy
            detail = _key_mismatch(mine, state_dict) or one_line(str(exc))[:300]
    reason = "; ".join(part for part in (context, detail) if part)
    raise CheckpointError(f"checkpoint {source} does not fit the model: {reason}")


def _shape(value: Any) -> str:
    return "x".join(map(str, value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _shape_mismatch(mine: Mapping[str, torch.Tensor], theirs: Mapping[str, Any]) -> str | None:
    """The first tensor whose shape differs, and how many more do."""
    bad = [k for k, v in mine.items() if k in theirs and (
        not isinstance(theirs[k], torch.Tensor) or tuple(theirs[k].shape) != tuple(v.shape))]
    if not bad:
        return None
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    key = bad[0]
    return f"tensor '{key}' is {_shape(theirs[key])} in the checkpoint but {_shape(mine[key])} in the model{more}"


def _key_mismatch(mine: Mapping[str, torch.Tensor], theirs: Mapping[str, Any]) -> str | None:
    """Which tensors one side has and the other lacks (the first of each, and counts)."""
    missing = [k for k in mine if k not in theirs]
    unexpected = [k for k in theirs if k not in mine]
    parts = []
    if missing:
        parts.append(f"the checkpoint lacks {len(missing)} of the model's tensors (first: '{missing[0]}')")
    if unexpected:
        parts.append(f"it has {len(unexpected)} the model does not (first: '{unexpected[0]}')")
    return "; ".join(parts) or None


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
