"""Small helpers shared by the training code: batch size, step seeds, code version."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


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
