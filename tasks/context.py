"""What a task builder gets besides its own config: :class:`TaskContext`.

A builder ``(task config, ctx) -> TrainTask`` finds here the tokenizer, its rank and the world size, the
device, the loader options, a cache of opened image databases (one ImgDb per folder for the whole run), a
cache of run-wide resources, and — for a pretraining objective — the dataset it is built for. The
loader factory is :meth:`TaskContext.objective_task` (an objective on the current dataset) or
:func:`tasks.base.make_loader` for tasks with their own batches.
"""
from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from data.sampler import OrderedBatchSampler, TokenBucketSampler
from tasks.base import ExampleSource, LoaderOptions, Objective, PretrainTask, TaskDataset


def task_seed(seed: int, task_name: str) -> int:
    """Per-task data seed, so two tasks on one dataset do not see the same order and masks."""
    return (int(seed) * 1_000_003 + zlib.crc32(task_name.encode("utf-8"))) % (2**63)


@dataclass
class DatasetBinding:
    """The pretraining dataset a task is being built for: ``name`` (task names are ``{task}_{name}``),
    ``weight`` (its mix ratio; a fine-tuning task's binding has the name "", its task keeps its own name), the training examples and the validation examples (None: no validation)."""

    name: str
    weight: float
    train: ExampleSource
    val: ExampleSource | None = None


@dataclass
class TaskContext:
    """Shared inputs of the task builders of one run.

    Attributes:
        run: the run config (seed, batch sizes, region rule ``conf_th/max_bb/min_bb/num_bb``, ...).
        tokenizer: the run's tokenizer (None where no task needs one).
        rank, world_size, device: where this process sits and computes.
        loader: DataLoader options (workers, pinning, device) shared by the run's tasks.
        open_txt_db, open_img_db: database constructors (tests pass in-memory stand-ins).
        dataset: the dataset of the objective being built (pretraining), else None.
        sources_of: pretraining: task name -> training sources of every dataset that lists it, for
            resources that span datasets (MRTM's class words in every caption language of the run).
    """

    run: Any
    tokenizer: Any = None
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    loader: LoaderOptions = field(default_factory=LoaderOptions)
    open_txt_db: Callable[..., Any] | None = None
    open_img_db: Callable[..., Any] | None = None
    dataset: DatasetBinding | None = None
    sources_of: dict[str, list[ExampleSource]] = field(default_factory=dict)
    _img_dbs: dict[str, Any] = field(default_factory=dict, repr=False)
    _resources: dict[Any, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.open_txt_db is None:
            from data.txt_db import TxtDb as open_txt_db
            self.open_txt_db = open_txt_db
        if self.open_img_db is None:
            from data.img_db import ImgDb as open_img_db
            self.open_img_db = open_img_db
        self.device = torch.device(self.device)

    # ------------------------------------------------------------------------------------------ data
    def img_db(self, path: str) -> Any:
        """The image db at ``path`` with the run's region rule, opened once per run."""
        if path not in self._img_dbs:
            r = self.run
            self._img_dbs[path] = self.open_img_db(path, r.conf_th, r.max_bb, r.min_bb, r.num_bb)
        return self._img_dbs[path]

    def source(self, txt_dbs: Sequence[str], img_dbs: Sequence[str], max_txt_len: int | None,
               check: Callable[[Any], None] | None = None) -> ExampleSource:
        """Examples of ``txt_dbs``, each paired with ``img_dbs[i]`` (or all with a single img_db);
        ``check(txt_db)`` runs on every opened txt_db (e.g. a vocabulary check)."""
        imgs = img_dbs if len(img_dbs) == len(txt_dbs) else list(img_dbs) * len(txt_dbs)
        parts = []
        for db, img in zip(txt_dbs, imgs):
            txt = self.open_txt_db(db, max_txt_len=max_txt_len)
            if check is not None:
                check(txt)
            parts.append((txt, self.img_db(img)))
        return ExampleSource(parts)

    def resource(self, key: Any, make: Callable[[], Any]) -> Any:
        """A run-wide resource built once by ``make()`` (e.g. a label vocabulary shared by datasets)."""
        if key not in self._resources:
            self._resources[key] = make()
        return self._resources[key]

    def for_dataset(self, binding: DatasetBinding) -> "TaskContext":
        """This context for building the objectives of one dataset (caches shared)."""
        return dataclasses.replace(self, dataset=binding, _img_dbs=self._img_dbs, _resources=self._resources)

    # --------------------------------------------------------------------------------------- loaders
    def seed_of(self, task_name: str) -> int:
        return task_seed(self.run.seed, task_name)

    def objective_task(self, objective: Objective, batch_examples: int = 0) -> PretrainTask:
        """The TrainTask of ``objective`` on :attr:`dataset`: token-bucket training batches, ordered
        validation batches, named ``{objective.name}_{dataset.name}`` and weighted by the mix ratio.

        ``batch_examples`` > 0: training batches of exactly that many examples (for an objective mixed into
        a run whose ``train_batch_size`` counts pairs, not tokens: ITC in the retrieval fine-tune)."""
        data = self.dataset
        if data is None:
            raise ValueError(f"objective_task({objective.name}): this context has no dataset")
        name = f"{objective.name}_{data.name}" if data.name else objective.name
        seed, run = self.seed_of(name), self.run
        if batch_examples > 0:  # every example counts as one "token": batches of exactly batch_examples
            train_sampler = TokenBucketSampler(np.ones(len(data.train), dtype=np.int64), batch_examples,
                                               bucket_size=max(len(data.train), 1), size_multiple=1, seed=seed,
                                               rank=self.rank, world_size=self.world_size)
        else:
            train_sampler = TokenBucketSampler(data.train.lens, run.train_batch_size, seed=seed, rank=self.rank,
                                               world_size=self.world_size)
        val_data = val_sampler = None
        if data.val is not None:
            val_data = TaskDataset(data.val, objective.for_validation())
            val_sampler = OrderedBatchSampler(data.val.lens, run.val_batch_size, seed=seed, rank=self.rank,
                                              world_size=self.world_size)
        return PretrainTask(name, data.weight, objective, TaskDataset(data.train, objective), train_sampler,
                            val_data, val_sampler, self.loader)


def run_context(cfg: Any, tokenizer: Any = None, rank: int = 0, world_size: int = 1,
                device: str | torch.device = "cpu", open_txt_db: Callable | None = None,
                open_img_db: Callable | None = None) -> TaskContext:
    """The context of a run config: loader options from ``n_workers``/``pin_mem`` (pinning on CUDA only)."""
    device = torch.device(device)
    options = LoaderOptions(cfg.n_workers, bool(cfg.pin_mem and device.type == "cuda"), device)
    return TaskContext(cfg, tokenizer, rank, world_size, device, options, open_txt_db, open_img_db)
