"""Atomic checkpoints with exact resume, and the run directory's self-description.

Layout of a run directory::

    OUT/hps.json  model.json  git_info.json      resolved run config, model config, code version
    OUT/ckpt/model_step_{N}.pt                   flat fp32 state dict with UC2 key names
    OUT/ckpt/train_state_step_{N}.pt             optimizer, scheduler, scaler, step, batch counts, RNG, config
    OUT/ckpt/model_best.pt  best.json            best model by a validation metric (fine-tuning)

Every file is written to a temporary file in the same directory, fsynced and renamed, so a crash leaves the
previous file or none, never a partial one. The train-state file is written after the model file and marks
the step as complete. Everything is loaded with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from utils.atomic import atomic_torch_save, atomic_write_json
from utils.errors import CheckpointError
from utils.faults import note_kept
from utils.misc import git_info

# keys that may change between the first run and its resumption without making it a different run
RUNTIME_KEYS = frozenset({"resume", "n_workers", "pin_mem", "log_steps", "dist_timeout_s"})


def load_torch_file(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` onto the CPU; unreadable files raise :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError or UnpicklingError for broken files
        raise CheckpointError(f"checkpoint file {path} is unreadable (truncated or corrupt?): "
                              f"{type(exc).__name__}: {exc}") from exc


def fp32_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copy with floating tensors in float32 (the model-file format)."""
    return {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu() for k, v in state.items()}


# ----------------------------------------------------------------------------------------------------------
# step checkpoints
# ----------------------------------------------------------------------------------------------------------
class CheckpointManager:
    """Writes, lists, loads and prunes ``model_step_{N}.pt`` / ``train_state_step_{N}.pt`` pairs."""

    MODEL = "model_step_{}.pt"
    TRAIN = "train_state_step_{}.pt"
    _TRAIN_RE = re.compile(r"^train_state_step_(\d+)\.pt$")

    def __init__(self, ckpt_dir: str | Path, keep_last: int = 3) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last: expected >= 1, got {keep_last}")
        self.dir = Path(ckpt_dir)
        self.keep_last = keep_last

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint (both files present), ascending."""
        if not self.dir.is_dir():
            return []
        found = (self._TRAIN_RE.match(p.name) for p in self.dir.iterdir())
        steps = (int(m.group(1)) for m in found if m)
        return sorted(s for s in steps if (self.dir / self.MODEL.format(s)).is_file())

    def latest(self) -> int | None:
        """Newest complete step, or None when there is none."""
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, model_state: Mapping[str, torch.Tensor], train_state: Mapping[str, Any]) -> Path:
        """Write the model (fp32) then the train state (which marks the step complete); prune old steps."""
        atomic_torch_save(fp32_state_dict(model_state), self.dir / self.MODEL.format(step))
        atomic_torch_save(dict(train_state), self.dir / self.TRAIN.format(step))
        note_kept("checkpoint", self.dir / self.TRAIN.format(step))
        self._prune()
        return self.dir / self.MODEL.format(step)

    def prune_orphans(self) -> list[Path]:
        """Delete ``model_step_N.pt`` files without their train state (a save interrupted between the two
        files): they never count as checkpoints, so nothing else would ever remove them. Call it only
        while no save is running (at start, under the run lock)."""
        orphans = []
        for path in self.dir.glob("model_step_*.pt") if self.dir.is_dir() else ():
            step = path.name[len("model_step_"):-len(".pt")]
            if step.isdigit() and not (self.dir / self.TRAIN.format(int(step))).is_file():
                path.unlink(missing_ok=True)
                orphans.append(path)
        return orphans

    def load(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(model state, train state) of ``step``; errors name the missing or broken file."""
        model = load_torch_file(self.dir / self.MODEL.format(step))
        train = load_torch_file(self.dir / self.TRAIN.format(step))
        if not isinstance(train, dict) or train.get("step") != step:
            raise CheckpointError(f"{self.dir / self.TRAIN.format(step)}: expected a train state of step {step}, "
                                  f"got step {train.get('step') if isinstance(train, dict) else type(train)}")
        return model, train

    def save_best(self, model_state: Mapping[str, torch.Tensor], info: Mapping[str, Any]) -> Path:
        """Write ``model_best.pt`` and ``best.json`` (metric name, value, step)."""
        path = self.dir / "model_best.pt"
        atomic_torch_save(fp32_state_dict(model_state), path)
        atomic_write_json(dict(info), self.dir / "best.json")
        return path

    def best_or_latest_model(self) -> Path | None:
        """The model to evaluate a run with: ``model_best.pt`` when the run kept one, else the newest complete
        step's model, else None."""
        if (self.dir / "model_best.pt").is_file():
            return self.dir / "model_best.pt"
        step = self.latest()
        return None if step is None else self.dir / self.MODEL.format(step)

    def best_info(self) -> dict[str, Any] | None:
        """Content of ``best.json``, or None."""
        path = self.dir / "best.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def _prune(self) -> None:
        for step in self.steps()[:-self.keep_last]:
            # train state first: without it the step no longer counts as complete
            (self.dir / self.TRAIN.format(step)).unlink(missing_ok=True)
            (self.dir / self.MODEL.format(step)).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------
# run directory
# ----------------------------------------------------------------------------------------------------------
def diff_configs(old: Any, new: Any, prefix: str = "", ignore: frozenset[str] = RUNTIME_KEYS) -> list[str]:
    """Dotted key paths whose values differ between two config dicts (top-level ``ignore`` keys skipped)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            if not prefix and key in ignore:
                continue
            name = f"{prefix}.{key}" if prefix else str(key)
            out.extend(diff_configs(old.get(key), new.get(key), name, ignore) if key in old and key in new
                       else [name])
        return out
    return [] if old == new else [prefix or "<root>"]


def check_run_dir(output_dir: str | Path, hps: Mapping[str, Any], *, resuming: bool = False) -> None:
    """Refuse a directory that already holds a run when its config differs (the differing keys are
    named), or when ``resuming`` is False (so a new run never mixes with an old run's checkpoints).

    Reads only: callers run it before anything (a log file, a TensorBoard file) is opened in the directory.
    """
    out = Path(output_dir)
    hps_path = out / "hps.json"
    if hps_path.is_file() and not _run_started(out):
        # hps.json of a start that failed before its first checkpoint: nothing to protect, so the
        # corrected command may start over (prepare_run_dir then writes the new config)
        logging.getLogger(__name__).warning("%s: the earlier run there saved no step; starting it anew", out)
    elif hps_path.is_file():
        try:
            old = json.loads(hps_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{hps_path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
        changed = diff_configs(old, json.loads(json.dumps(dict(hps))))
        if changed:
            raise CheckpointError(f"{out} already holds a run with a different config (keys differ: "
                                  f"{', '.join(changed)}); use a new output_dir")
        if not resuming:
            raise CheckpointError(f"{out} already holds this run; set resume to 'auto' to continue it, "
                                  f"or use a new output_dir")


def _run_started(out: Path) -> bool:
    """True when a run directory holds a saved step or final weights (something a new run could mix with)."""
    ckpt = out / "ckpt"
    return (CheckpointManager(ckpt).latest() is not None or (ckpt / "model_best.pt").is_file()
            or (out / "model_final.pt").is_file())


def prepare_run_dir(output_dir: str | Path, hps: Mapping[str, Any], model_config: Mapping[str, Any] | None = None,
                    *, resuming: bool = False) -> Path:
    """Create the run directory and write ``hps.json``, ``model.json`` and ``git_info.json``, after
    :func:`check_run_dir` accepted it."""
    out = Path(output_dir)
    hps_path = out / "hps.json"
    check_run_dir(out, hps, resuming=resuming)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(dict(hps), hps_path)
    if model_config is not None:
        atomic_write_json(dict(model_config), out / "model.json")
    atomic_write_json(git_info(), out / "git_info.json")
    return out
