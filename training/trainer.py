"""The one training loop shared by pretraining, retrieval and VQA fine-tuning.

Tasks follow the ``TrainTask`` protocol of docs/ARCHITECTURE.md (``name``, ``weight``,
``train_batches(start_batch)``, ``compute_loss(model, batch) -> (loss, logs)``, ``validate(model)``).
Each optimizer step draws ONE task with a generator seeded by (seed, step), the same on every rank, runs
``gradient_accumulation_steps`` micro-batches of it, averages the gradients over ranks, unscales (fp16),
clips, steps the optimizer and the schedule. Checkpoints hold everything needed to continue bit-for-bit:
model, optimizer, schedule, grad scaler, step, the batches each task consumed, and every rank's RNG.
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
from torch import Tensor, nn

from optim.adamw import build_optimizer
from optim.sched import build_scheduler
from utils import distributed as du
from utils.checkpoint import CheckpointManager, check_run_dir, prepare_run_dir
from utils.config import to_dict
from utils.errors import CheckpointError, ConfigError
from utils.logger import RunLogger
from utils.device import autocast, make_grad_scaler, move_to_device, pick_device
from utils.misc import batch_size_of, step_seed


class TrainTask(Protocol):
    """What the trainer needs from a task (see docs/ARCHITECTURE.md)."""

    name: str
    weight: float

    def train_batches(self, start_batch: int) -> Iterator[dict]: ...

    def compute_loss(self, model: nn.Module, batch: dict) -> tuple[Tensor, dict[str, float]]: ...

    def validate(self, model: nn.Module) -> dict[str, float]: ...


def _rng_state() -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if torch.cuda.is_available() and "cuda" in state and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Runs the mixed-task loop on ``model``.

    Args:
        model: the module; moved to ``device``. Its ``state_dict()`` keys are what model files hold.
        tasks: objects following :class:`TrainTask`; names must be unique, weights positive.
        cfg: a :class:`training.run_config.TrainConfig` (or subclass).
        optimizer, scheduler: defaults are :func:`optim.adamw.build_optimizer` (with ``lr_multipliers``)
            and :func:`optim.sched.build_scheduler`.
        model_config: written to ``OUT/model.json``.
        best_metric: ``"{task}/{metric}"`` of validation to keep ``ckpt/model_best.pt`` by; ``best_mode``
            "max" or "min".
        patience: stop early after this many validations in a row without a new best (None: never).
        callbacks: called as ``cb(trainer)`` after every optimizer step (after logging/validation/saving).
    """

    def __init__(self, model: nn.Module, tasks: Sequence[TrainTask], cfg: Any, optimizer: Any = None,
                 scheduler: Any = None, *, device: torch.device | None = None, logger: RunLogger | None = None,
                 model_config: dict | None = None, lr_multipliers: dict[str, float] | None = None,
                 best_metric: str | None = None, best_mode: str = "max", patience: int | None = None,
                 callbacks: Sequence[Callable[["Trainer"], None]] = ()) -> None:
        if best_mode not in ("max", "min"):
            raise ConfigError(f"trainer: best_mode must be 'max' or 'min', got {best_mode!r}")
        self.cfg = cfg
        self.device = device or pick_device()
        self.model = model.to(self.device)
        self.tasks = self._check_tasks(tasks)
        self.optimizer = optimizer or build_optimizer(self.model, cfg, lr_multipliers)
        self.scheduler = scheduler or build_scheduler(self.optimizer, cfg)
        self.scaler = make_grad_scaler(cfg.precision, self.device.type)
        self.ckpt = CheckpointManager(Path(cfg.output_dir) / "ckpt", cfg.keep_last)
        self._owns_logger = logger is None
        if du.is_main():
            # Before the logger opens log.txt and a TensorBoard file there: a refused directory stays untouched.
            check_run_dir(cfg.output_dir, self._hps(), resuming=cfg.resume != "none")
        self.logger = logger or RunLogger(cfg.output_dir, enabled=du.is_main())
        self.model_config = model_config
        self.best_metric, self.best_mode = best_metric, best_mode
        self.callbacks = list(callbacks)
        self.step = 0
        self.consumed = {t.name: 0 for t in self.tasks}
        self.best_value: float | None = None
        self.patience = patience
        self.bad_validations = 0  # validations in a row without a new best (early stopping)
        self._streams: dict[str, Iterator[dict]] = {}
        self._window: dict[str, Any] = self._new_window()

    # ------------------------------------------------------------------------------------------ checks
    @staticmethod
    def _check_tasks(tasks: Sequence[TrainTask]) -> list[TrainTask]:
        names = [t.name for t in tasks]
        if not names:
            raise ConfigError("trainer: expected at least one task")
        if len(set(names)) != len(names):
            raise ConfigError(f"trainer: task names must be unique, got {names}")
        bad = [t.name for t in tasks if not (t.weight > 0 and math.isfinite(t.weight))]
        if bad:
            raise ConfigError(f"trainer: tasks {bad} need a positive weight (mix_ratio)")
        return list(tasks)

    # ------------------------------------------------------------------------------------------ main loop
    def train(self) -> dict[str, float]:
        """Train from the resume point to ``num_train_steps``; returns the last validation metrics."""
        cfg = self.cfg
        try:  # from the start: a failed resume must close the logger too (it hooks the root logger)
            self._setup_run()
            bar = self.logger.progress(cfg.num_train_steps, self.step)
            metrics: dict[str, float] = {}
            last_saved = self.step if self.ckpt.latest() == self.step else None
            self.model.train()
            while self.step < cfg.num_train_steps and not self.stopped_early:
                self._train_step()
                bar.update(1)
                if cfg.log_steps > 0 and self.step % cfg.log_steps == 0:
                    self._log_window()
                if cfg.valid_steps > 0 and self.step % cfg.valid_steps == 0:
                    metrics = self.validate()
                if cfg.save_steps > 0 and self.step % cfg.save_steps == 0:
                    self.save()
                    last_saved = self.step
                for callback in self.callbacks:
                    callback(self)
            if cfg.log_steps > 0 and self.step % cfg.log_steps != 0:
                self._log_window()  # the last, partial window (empty, and skipped, when nothing ran)
            if cfg.valid_steps > 0 and self.step % cfg.valid_steps != 0:
                metrics = self.validate()
            if last_saved != self.step:
                self.save()
        finally:
            if self._owns_logger:
                self.logger.close()
        return metrics

    @property
    def stopped_early(self) -> bool:
        """Whether ``patience`` validations in a row brought no new best."""
        return self.patience is not None and self.bad_validations >= self.patience

    def _train_step(self) -> None:
        """One optimizer step of one drawn task."""
        task = self.draw_task(self.step)
        start = time.perf_counter()
        group = self.optimizer.param_groups[0]
        self._window["lr"] = group["lr"] / group.get("lr_mult", 1.0)  # this step's LR, without the group multiplier
        loss, logs, n_examples = self._accumulate(task)
        grad_norm = self._optimizer_step()
        self.step += 1
        self._record(task.name, loss, logs, n_examples, grad_norm, time.perf_counter() - start)

    def draw_task(self, step: int) -> TrainTask:
        """The task of optimizer step ``step``: a weighted draw seeded by (seed, step), equal on all ranks."""
        gen = torch.Generator().manual_seed(step_seed(self.cfg.seed, step))
        weights = torch.tensor([t.weight for t in self.tasks], dtype=torch.float64)
        return self.tasks[int(torch.multinomial(weights, 1, generator=gen))]

    def _stream(self, task: TrainTask) -> Iterator[dict]:
        if task.name not in self._streams:
            self._streams[task.name] = iter(task.train_batches(self.consumed[task.name]))
        return self._streams[task.name]

    def _accumulate(self, task: TrainTask) -> tuple[Tensor, dict[str, float], int]:
        """Forward/backward of ``gradient_accumulation_steps`` micro-batches; grads are summed in .grad."""
        accum = self.cfg.gradient_accumulation_steps
        total = torch.zeros((), device=self.device)
        logs_sum: dict[str, float] = defaultdict(float)
        n_examples = 0
        for _ in range(accum):
            batch = next(self._stream(task))
            self.consumed[task.name] += 1
            n_examples += batch_size_of(batch)
            batch = move_to_device(batch, self.device, pin=self.cfg.pin_mem)
            with autocast(self.cfg.precision, self.device.type):
                loss, logs = task.compute_loss(self.model, batch)
            loss = loss.float() / accum  # summed over micro-steps = mean over them
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            total += loss.detach()
            for key, value in logs.items():
                logs_sum[key] += float(value) / accum
        return total, dict(logs_sum), n_examples

    def _optimizer_step(self) -> Tensor:
        """All-reduce grads, unscale (fp16), clip, step optimizer and schedule; returns the grad norm."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        du.all_reduce_grads(params)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.grad_norm if self.cfg.grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when the grads hold inf/nan
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm.detach()

    # ------------------------------------------------------------------------------------------ logging
    @staticmethod
    def _new_window() -> dict[str, Any]:
        return {"loss": defaultdict(float), "count": defaultdict(int), "logs": defaultdict(float),
                "log_count": defaultdict(int), "grad_norm": 0.0, "steps": 0, "examples": 0, "seconds": 0.0, "lr": 0.0}

    def _record(self, name: str, loss: Tensor, logs: dict[str, float], n_examples: int, grad_norm: Tensor,
                seconds: float) -> None:
        win = self._window
        win["loss"][name] += loss  # tensors: no device sync until the window is logged
        win["count"][name] += 1
        for key, value in logs.items():  # a task may report a value on some steps only (e.g. hard negatives)
            win["logs"][f"{name}/{key}"] += value
            win["log_count"][f"{name}/{key}"] += 1
        win["grad_norm"] += grad_norm
        win["steps"] += 1
        win["examples"] += n_examples
        win["seconds"] += seconds

    def _log_window(self) -> None:
        """Average the window's scalars (losses over ranks too), write them, start a new window."""
        win, self._window = self._window, self._new_window()
        if win["steps"] == 0:
            return
        names = sorted(win["loss"])  # same tasks on every rank: the draws are rank-independent
        losses = du.all_reduce_mean(torch.stack([torch.as_tensor(win["loss"][n], dtype=torch.float32,
                                                                 device=self.device) for n in names]))
        scalars = {f"loss/{n}": float(v) / win["count"][n] for n, v in zip(names, losses.tolist())}
        scalars.update({f"train/{k}": v / win["log_count"][k] for k, v in win["logs"].items()})
        scalars["lr"] = win["lr"]
        scalars["grad_norm"] = float(win["grad_norm"]) / win["steps"]
        scalars["examples_per_s"] = win["examples"] * du.get_world_size() / max(win["seconds"], 1e-9)
        self.logger.scalars(self.step, scalars)
        self.logger.info(f"step {self.step}: " + " ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items())))

    # ------------------------------------------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        """Every task's ``validate`` in eval mode, no grad; logged as ``val/{task}/{metric}``."""
        self.model.eval()
        metrics: dict[str, float] = {}
        with torch.no_grad(), autocast(self.cfg.precision, self.device.type):
            for task in self.tasks:
                for key, value in task.validate(self.model).items():
                    metrics[f"{task.name}/{key}"] = float(value)
        self.model.train()
        self.logger.scalars(self.step, {f"val/{k}": v for k, v in metrics.items()})
        self.logger.info(f"validation at step {self.step}: "
                         + " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
        self._update_best(metrics)
        return metrics

    def _update_best(self, metrics: dict[str, float]) -> None:
        if self.best_metric is None:
            return
        if self.best_metric not in metrics:
            raise ConfigError(f"trainer: best_metric '{self.best_metric}' is not among the validation "
                              f"metrics {sorted(metrics)}")
        value = metrics[self.best_metric]
        better = self.best_value is None or (value > self.best_value if self.best_mode == "max"
                                             else value < self.best_value)
        self.bad_validations = 0 if better else self.bad_validations + 1
        if self.stopped_early:
            self.logger.info(f"early stop: {self.patience} validations without a new best {self.best_metric}")
        if better:
            self.best_value = value
            if du.is_main():
                self.ckpt.save_best(self.model.state_dict(),
                                    {"metric": self.best_metric, "value": value, "step": self.step})
            self.logger.info(f"new best {self.best_metric}={value:.4g} at step {self.step}")

    # ------------------------------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        """Checkpoint the current step (rank 0 writes; every rank contributes its RNG state)."""
        rng = du.all_gather_object(_rng_state())
        if du.is_main():
            state = {
                "step": self.step, "consumed": dict(self.consumed), "rng": rng,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "best_value": self.best_value, "bad_validations": self.bad_validations, "world_size": du.get_world_size(),
                "config": to_dict(self.cfg) if dataclasses.is_dataclass(self.cfg) else dict(vars(self.cfg)),
            }
            self.ckpt.save(self.step, self.model.state_dict(), state)
            self.logger.info(f"saved checkpoint of step {self.step} in {self.ckpt.dir}")
        du.barrier()

    def _hps(self) -> dict[str, Any]:
        """The run config as ``hps.json`` holds it."""
        return to_dict(self.cfg) if dataclasses.is_dataclass(self.cfg) else dict(vars(self.cfg))

    def _setup_run(self) -> None:
        """Write/check the run directory, then resume or make all ranks start from rank 0's weights."""
        if du.is_main():
            prepare_run_dir(self.cfg.output_dir, self._hps(), self.model_config, resuming=self.cfg.resume != "none")
        du.barrier()
        if not self._resume():
            du.broadcast_params(self.model)

    def _resume_source(self) -> tuple[CheckpointManager, int] | None:
        """Which checkpoint to continue from: ``resume`` = 'auto', 'none', a ckpt dir, or a train-state file."""
        resume = self.cfg.resume
        if resume == "none":
            return None
        if resume == "auto":
            step = self.ckpt.latest()
            return (self.ckpt, step) if step is not None else None
        path = Path(resume)
        if path.is_dir():
            mgr = CheckpointManager(path, self.cfg.keep_last)
            step = mgr.latest()
            if step is None:
                raise CheckpointError(f"resume: no complete checkpoint in {path}")
            return mgr, step
        match = re.fullmatch(r"(?:train_state|model)_step_(\d+)\.pt", path.name)
        if not match:
            raise ConfigError(f"resume: expected 'auto', 'none', a checkpoint directory or a "
                              f"train_state_step_N.pt file, got {resume!r}")
        return CheckpointManager(path.parent, self.cfg.keep_last), int(match.group(1))

    def _resume(self) -> bool:
        source = self._resume_source()
        steps = du.all_gather_object(source[1] if source else None)
        if len(set(steps)) != 1:
            raise CheckpointError(f"resume: ranks see different latest checkpoints {steps} (shared file system?)")
        if source is None:
            return False
        model_state, state = source[0].load(source[1])
        self.load_state(model_state, state)
        self.logger.info(f"resumed from step {self.step} in {source[0].dir}")
        return True

    def load_state(self, model_state: dict[str, Tensor], state: dict[str, Any]) -> None:
        """Restore everything :meth:`save` wrote."""
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        unknown = set(state["consumed"]) - set(self.consumed)
        if unknown:
            raise CheckpointError(f"resume: checkpoint has tasks {sorted(unknown)} that this run does not have")
        self.consumed.update({k: int(v) for k, v in state["consumed"].items()})
        self.best_value = state.get("best_value")
        self.bad_validations = int(state.get("bad_validations", 0))
        rng = state["rng"]
        _set_rng_state(rng[du.get_rank()] if len(rng) == du.get_world_size() else rng[0])
        self._streams.clear()

