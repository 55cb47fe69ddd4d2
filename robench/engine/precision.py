"""Training precision: autocast for every forward pass of a step (the attack's too), and
for fp16 loss scaling that also protects the attack's input gradients from underflow.

bf16 needs no scaling (fp32's exponent range). fp16 scales the training loss with a
``GradScaler`` and each attack loss by a fixed factor: PGD steps use only the sign or
the direction of the input gradient, so the factor changes nothing but underflow.
Validation runs in fp32, and so does the final evaluation unless ``eval.precision``
asks otherwise.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from robench.api.perturb import scaled_attack_losses

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: the factor on fp16 attack losses before their input gradient is taken
FP16_ATTACK_SCALE = 2.0**10


class Precision:
    """One training run's precision: its autocast and, for fp16, its loss scaler."""

    def __init__(self, name: str, device: torch.device) -> None:
        if name not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
        self.name, self.device = name, device
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.name == "fp32":
            yield
            return
        with torch.autocast(self.device.type, dtype=_DTYPES[self.name]), contextlib.ExitStack() as stack:
            if self.scaler is not None:
                stack.enter_context(scaled_attack_losses(FP16_ATTACK_SCALE))
            yield

    def step(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward and optimiser step, through the scaler for fp16 (it skips steps with inf/NaN gradients)."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


class AutocastClassifier(nn.Module):
    """``model`` evaluated under autocast, returning fp32 logits (attacks expect fp32)."""

    def __init__(self, model: nn.Module, name: str, device: torch.device) -> None:
        super().__init__()
        self.model, self.dtype, self.device_type = model, _DTYPES[name], device.type

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x).float()


def evaluation_model(model: nn.Module, name: str, device: torch.device) -> nn.Module:
    """The model the final evaluation attacks: itself in fp32, else under autocast."""
    return model if name == "fp32" else AutocastClassifier(model, name, device)
