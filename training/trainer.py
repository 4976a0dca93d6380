"""The one training loop shared by pretraining, retrieval and VQA fine-tuning.

Tasks follow the ``TrainTask`` protocol of docs/ARCHITECTURE.md (``name``, ``weight``,
``train_batches(start_batch)``, ``compute_loss(model, batch) -> (loss, logs)``, ``validate(model)``).
Each optimizer step draws ONE task with a generator seeded by (seed, step), the same on every rank, runs
``gradient_accumulation_steps`` micro-batches of it (gradients summed, as the released code, or averaged:
``grad_accumulation``), averages the gradients over ranks, unscales (fp16), clips, steps the optimizer and the schedule. Checkpoints hold everything needed to continue bit-for-bit:
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
from utils.faults import NonFiniteLossError, RunLock, check_output_dir, clean_stale_temps
from utils.logger import RunLogger
from utils.device import autocast, make_grad_scaler, move_to_device, pick_device
from utils.misc import batch_size_of, step_seed


class TrainTask(Protocol):
    """What the trainer needs from a task (see docs/ARCHITECTURE.md)."""

    name: str
    weight: float

    def train_batches(self, start_batch: int) -> Iterator[dict]: ...

    def compute_loss(self, model: nn.Module, batch: dict) -> tuple[Tensor, dict[str, float | Tensor]]: ...

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


def _check_resume_shapes(model: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """Refuse to resume from a checkpoint of another model size, naming the file and what differs
    (instead of load_state_dict's many-line error)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if missing or extra or shapes:
        parts = [f"{len(shapes)} shape(s) differ (checkpoint vs model): {'; '.join(shapes[:3])}" if shapes else "",
                 f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}" if missing else "",
                 f"not in the model {extra[:3]}{' ...' if len(extra) > 3 else ''}" if extra else ""]
        raise CheckpointError(f"resume: {path} is from a model of another size ("
                              + ", ".join(p for p in parts if p) + "); resume with the run's own model "
                              "config, or use a new output_dir")


def _check_world_size(state: dict[str, Any], path: Path) -> None:
    """Refuse to resume with another number of ranks than the checkpoint's.

    Each rank's data position counts *its own* batches of a per-rank shard, and each rank has its own
    RNG stream; neither maps onto another sharding, so a silent resume would repeat or skip data.
    """
    saved = int(state.get("world_size", len(state.get("rng", [None]))))
    world = du.get_world_size()
    if saved != world:
        raise CheckpointError(
            f"resume: {path} was written by a run with world size {saved}, this run has world size {world}; "
            f"resume with {saved} processes, or start a new run (new output_dir) with checkpoint="
            f"{path.with_name(path.name.replace('train_state', 'model'))} to keep only the weights")


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
            check_output_dir(cfg.output_dir)
            check_run_dir(cfg.output_dir, self._hps(), resuming=cfg.resume != "none")
        self.logger = logger or RunLogger(cfg.output_dir, enabled=du.is_main())
        self.model_config = model_config
        self.best_metric, self.best_mode = best_metric, best_mode
        self.callbacks = list(callbacks)
        self.step = 0
        self.consumed = {t.name: 0 for t in self.tasks}
        self.best_value: float | None = None
        self.last_task: str | None = None  # the task and loss (0-d tensor) of the latest optimizer step
        self.last_loss: Tensor | None = None
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
            self._release_run()
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
        if not self._loss_is_finite(task, loss):
            self._skip_step()
            return
        grad_norm = self._optimizer_step()
        self.step += 1
        self.last_task, self.last_loss = task.name, loss  # for callbacks; a tensor: reading it syncs
        self._record(task.name, loss, logs, n_examples, grad_norm, time.perf_counter() - start)

    def _loss_is_finite(self, task: TrainTask, loss: Tensor) -> bool:
        """False when this step's loss is NaN/Inf on any rank (the same answer on every rank).

        Counts consecutive such steps and stops the run after ``max_nonfinite_steps`` of them, before
        anything is saved: the checkpoints on disk all hold finite weights, and none is rotated out.
        """
        if bool(torch.isfinite(du.all_reduce_mean(loss))):  # NaN on one rank makes the mean NaN
            self._nonfinite_run = 0
            return True
        self._nonfinite_run = getattr(self, "_nonfinite_run", 0) + 1
        limit = getattr(self.cfg, "max_nonfinite_steps", 0)
        self.logger.info(f"step {self.step + 1}: loss of task {task.name} is {float(loss)}; step skipped "
                         f"({self._nonfinite_run} in a row)")
        if limit and self._nonfinite_run >= limit:
            kept = self.ckpt.latest()
            raise NonFiniteLossError(
                f"training stopped at step {self.step + 1}: the loss was NaN/Inf for {self._nonfinite_run} "
                f"consecutive steps (max_nonfinite_steps={limit}, last task {task.name}); "
                + (f"the last checkpoint, step {kept} in {self.ckpt.dir}, is kept unchanged"
                   if kept is not None else "no checkpoint had been written")
                + "; check the data for NaN/Inf features or lower learning_rate")
        return False

    def _skip_step(self) -> None:
        """Drop this step's gradients without touching the weights; the schedule still advances."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

    def draw_task(self, step: int) -> TrainTask:
        """The task of optimizer step ``step``: a weighted draw seeded by (seed, step), equal on all ranks."""
        gen = torch.Generator().manual_seed(step_seed(self.cfg.seed, step))
        weights = torch.tensor([t.weight for t in self.tasks], dtype=torch.float64)
        return self.tasks[int(torch.multinomial(weights, 1, generator=gen))]

    def _stream(self, task: TrainTask) -> Iterator[dict]:
        if task.name not in self._streams:
            self._streams[task.name] = iter(task.train_batches(self.consumed[task.name]))
        return self._streams[task.name]

    def _accumulate(self, task: TrainTask) -> tuple[Tensor, dict[str, float | Tensor], int]:
        """Forward/backward of ``gradient_accumulation_steps`` micro-batches; grads are summed in .grad.

        Tensor logs stay on the device (float64, so their sums equal the Python-float sums of a
        ``.item()`` per micro-step) until :meth:`_log_window` reads them all at once.
        """
        accum = self.cfg.gradient_accumulation_steps
        total = torch.zeros((), device=self.device)
        logs_sum: dict[str, float | Tensor] = defaultdict(float)
        n_examples = 0
        for _ in range(accum):
            batch = next(self._stream(task))
            self.consumed[task.name] += 1
            n_examples += batch_size_of(batch)
            batch = move_to_device(batch, self.device, pin=self.cfg.pin_mem)
            with autocast(self.cfg.precision, self.device.type):
                loss, logs = task.compute_loss(self.model, batch)
            loss = loss.float()
            scaled = loss * self._micro_grad_scale()
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += loss.detach() / accum  # the logged loss is the mean over micro-batches either way
            for key, value in logs.items():
                value = value.detach().double() if isinstance(value, Tensor) else float(value)
                logs_sum[key] += value / accum
        return total, dict(logs_sum), n_examples

    def _micro_grad_scale(self) -> float:
        """Factor on each micro-batch loss before backward.

        The released UC2/UNITER code sums the micro-batch gradients and clips the sum
        (``grad_accumulation = "sum"``, 1.0); "mean" divides by the accumulation count, so the clipped
        norm is ``accum`` times smaller and the clip rarely acts.
        """
        mode = getattr(self.cfg, "grad_accumulation", "sum")
        return 1.0 / self.cfg.gradient_accumulation_steps if mode == "mean" else 1.0

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

    def _record(self, name: str, loss: Tensor, logs: dict[str, float | Tensor], n_examples: int, grad_norm: Tensor,
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
        scalars.update({f"train/{k}": v / win["log_count"][k] for k, v in self._read_logs(win["logs"]).items()})
        scalars["lr"] = win["lr"]
        scalars["grad_norm"] = float(win["grad_norm"]) / win["steps"]
        scalars["examples_per_s"] = win["examples"] * du.get_world_size() / max(win["seconds"], 1e-9)
        self.logger.scalars(self.step, scalars)
        self.logger.info(f"step {self.step}: " + " ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items())))

    @staticmethod
    def _read_logs(sums: dict[str, float | Tensor]) -> dict[str, float]:
        """The window's log sums as floats: the tensor ones copied to the host in one transfer."""
        keys = [k for k, v in sums.items() if isinstance(v, Tensor)]
        values = torch.stack([sums[k] for k in keys]).tolist() if keys else []
        read = dict(zip(keys, values))
        return {k: read.get(k, v) for k, v in sums.items()}  # insertion order kept

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
            self._save_best({"metric": self.best_metric, "value": value, "step": self.step})
            self.logger.info(f"new best {self.best_metric}={value:.4g} at step {self.step}")

    def _save_best(self, info: dict[str, Any]) -> None:
        """Rank 0 writes model_best.pt; every rank waits until it is complete, so that no rank reads a
        missing or older best model (e.g. a final evaluation right after the last validation)."""
        if du.is_main():
            self._write_checkpoint(lambda: self.ckpt.save_best(self.model.state_dict(), info), "model_best.pt")
        du.barrier()

    def _write_checkpoint(self, write: Callable[[], Any], what: str) -> None:
        """Run ``write``; an OSError (disk full, quota, permissions) becomes a CheckpointError that names
        the file and the last complete checkpoint, which the atomic writes left loadable."""
        from utils.faults import DiskFullError

        try:
            write()
        except DiskFullError as exc:  # already names the file (utils/faults.py); add what is still there
            raise DiskFullError(f"{exc}; the last complete checkpoint is step {self.ckpt.latest()} and is "
                                f"still loadable", exc.filename) from exc
        except OSError as exc:
            raise CheckpointError(f"writing {what} in {self.ckpt.dir} failed at step {self.step} "
                                  f"({exc.strerror or exc}); the last complete checkpoint is step "
                                  f"{self.ckpt.latest()} and is still loadable") from exc

    # ------------------------------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        """Checkpoint the current step (rank 0 writes; every rank contributes its RNG state)."""
        if getattr(self, "_nonfinite_run", 0):
            # within a streak of skipped steps: a save would rotate an older, surely good, checkpoint out
            self.logger.info(f"not saving step {self.step}: the last {self._nonfinite_run} step(s) had a "
                             f"non-finite loss; the checkpoints in {self.ckpt.dir} are kept as they are")
            return
        self._check_finite_weights()
        rng = du.all_gather_object(_rng_state())
        if du.is_main():
            state = {
                "step": self.step, "consumed": dict(self.consumed), "rng": rng,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "best_value": self.best_value, "bad_validations": self.bad_validations, "world_size": du.get_world_size(),
                "config": to_dict(self.cfg) if dataclasses.is_dataclass(self.cfg) else dict(vars(self.cfg)),
            }
            self._write_checkpoint(lambda: self.ckpt.save(self.step, self.model.state_dict(), state),
                                   f"the checkpoint of step {self.step}")
            self.logger.info(f"saved checkpoint of step {self.step} in {self.ckpt.dir}")
        du.barrier()

    def _check_finite_weights(self) -> None:
        """Refuse to checkpoint NaN/Inf weights: saving them would rotate a good checkpoint out."""
        bad = [name for name, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise NonFiniteLossError(f"not saving step {self.step}: parameters {bad[:4]} hold NaN/Inf; the "
                                     f"checkpoints in {self.ckpt.dir} are kept unchanged")

    def _hps(self) -> dict[str, Any]:
        """The run config as ``hps.json`` holds it."""
        return to_dict(self.cfg) if dataclasses.is_dataclass(self.cfg) else dict(vars(self.cfg))

    def _setup_run(self) -> None:
        """Write/check the run directory, then resume or make all ranks start from rank 0's weights."""
        if du.is_main():
            self._claim_run_dir()
            prepare_run_dir(self.cfg.output_dir, self._hps(), self.model_config, resuming=self.cfg.resume != "none")
        du.barrier()
        if not self._resume():
            du.broadcast_params(self.model)

    def _claim_run_dir(self) -> None:
        """Lock the output directory against a second run, then remove what dead writers left there."""
        self._lock = RunLock(self.cfg.output_dir).acquire()
        for folder in (self.cfg.output_dir, self.ckpt.dir):  # not recursive: output_dir may hold much else
            clean_stale_temps(folder, recursive=False)
        for orphan in self.ckpt.prune_orphans():
            self.logger.info(f"removed {orphan}: a model file whose save was interrupted before its train state")

    def _release_run(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

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
        _check_resume_shapes(self.model, model_state, source[0].dir / source[0].MODEL.format(source[1]))
        _check_world_size(state, source[0].dir / CheckpointManager.TRAIN.format(source[1]))
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
        _set_rng_state(state["rng"][du.get_rank()])  # each rank its own stream (checked: same world size)
        self._streams.clear()

