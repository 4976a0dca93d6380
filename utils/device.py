"""The one place that knows about devices and precision: this rank's device, autocast, the grad scaler,
and moving (nested) batches to a device. Precision names are "fp32", "fp16" and "bf16"."""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device() -> torch.device:
    """This rank's GPU when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def autocast(precision: str, device_type: str | torch.device) -> ContextManager:
    """``torch.autocast`` for fp16/bf16, a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in _DTYPES:
        raise ValueError(f"precision: expected 'fp32', 'fp16' or 'bf16', got {precision!r}")
    device_type = device_type.type if isinstance(device_type, torch.device) else device_type
    return torch.autocast(device_type=device_type, dtype=_DTYPES[precision])


def make_grad_scaler(precision: str, device_type: str) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 only (bf16 has fp32's exponent range and needs none)."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device_type)


def move_to_device(batch: Any, device: torch.device | str, pin: bool = False) -> Any:
    """Every tensor of a (nested dict/list/tuple) batch on ``device``; other values unchanged.

    On CUDA the copy is non-blocking, from pinned memory when ``pin`` (pinning first if needed).
    """
    device = torch.device(device)
    if isinstance(batch, torch.Tensor):
        if device.type != "cuda":
            return batch.to(device)
        if pin and not batch.is_pinned():
            batch = batch.pin_memory()
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device, pin) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, pin) for v in batch)
    return batch
