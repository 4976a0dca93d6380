"""Small helpers shared by the training code: precision contexts, device moves, code version, seeds."""
from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Any, ContextManager

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(precision: str, device_type: str) -> ContextManager:
    """``torch.autocast`` for fp16/bf16, a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in _DTYPES:
        raise ValueError(f"precision: expected 'fp32', 'fp16' or 'bf16', got {precision!r}")
    return torch.autocast(device_type=device_type, dtype=_DTYPES[precision])


def make_grad_scaler(precision: str, device_type: str) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 only (bf16 has fp32's exponent range and needs none)."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device_type)


def move_to_device(batch: Any, device: torch.device, pin: bool = False) -> Any:
    """Move every tensor in a (nested) batch to ``device``; non_blocking copies from pinned memory on CUDA."""
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


def batch_size_of(batch: Any) -> int:
    """Number of examples in a batch dict: ``input_ids.size(0)``, else the first tensor's first dim."""
    if isinstance(batch, dict):
        if isinstance(batch.get("input_ids"), torch.Tensor):
            return int(batch["input_ids"].size(0))
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return int(value.size(0))
    if isinstance(batch, torch.Tensor) and batch.dim() > 0:
        return int(batch.size(0))
    return 0


def step_seed(seed: int, step: int) -> int:
    """A well-mixed 63-bit seed from (seed, step), identical on every rank."""
    return int(np.random.SeedSequence((seed, step)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def git_info(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """Commit, branch and dirty flag of the code, or ``{}`` when git is unavailable."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {}
