"""Toy model and tasks implementing the TrainTask protocol, and a training entry point for subprocess tests.

Data is deterministic: global batch ``i`` of a task is drawn from ``numpy.random.default_rng((seed, task
id, i))`` as ``world_size * batch_size`` examples, of which each rank takes its own slice. So one process
with batch 2b sees exactly the examples that two ranks with batch b see together.

Run as a script (``python tests/_toy_tasks.py --output_dir OUT ...``), it trains with the shared Trainer;
``--hang_after_step K`` makes it print ``HANG K`` and sleep after step K (so a test can SIGKILL it at a
known point), ``--die_rank R --die_step K`` makes rank R exit abruptly (or hang, with ``--die_mode
hang``), ``--dump_params FILE`` writes this rank's final parameters.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]

from utils import distributed as du
from utils.config import parse_args_and_config
from training.run_config import TrainConfig
from training.trainer import Trainer

IN_DIM = 4


class ToyModel(nn.Module):
    """MLP with dropout, a LayerNorm and two heads (each task uses one, so the other gets no grad)."""

    def __init__(self, dropout: float = 0.1, hidden: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(IN_DIM, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Dropout(dropout))
        self.heads = nn.ModuleDict({"a": nn.Linear(hidden, 1), "b": nn.Linear(hidden, 1)})

    def forward(self, x: torch.Tensor, head: str) -> torch.Tensor:
        """x (B, IN_DIM) -> (B,)"""
        return self.heads[head](self.body(x)).squeeze(-1)


class ToyTask:
    """Regression y = x . w_task + noise, on head ``head``."""

    def __init__(self, name: str, weight: float, task_id: int, head: str, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.name, self.weight, self.task_id, self.head = name, weight, task_id, head
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.w_true = np.random.default_rng((seed, task_id, 10**6)).normal(size=IN_DIM)

    def _examples(self, key: tuple, n: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(key)
        x = rng.normal(size=(n, IN_DIM))
        y = x @ self.w_true + 0.1 * rng.normal(size=n)
        return {"x": torch.tensor(x, dtype=torch.float32), "y": torch.tensor(y, dtype=torch.float32)}

    def train_batches(self, start_batch: int) -> Iterator[dict]:
        i = start_batch
        while True:
            full = self._examples((self.seed, self.task_id, i), self.batch_size * self.world_size)
            lo = self.rank * self.batch_size
            yield {k: v[lo:lo + self.batch_size] for k, v in full.items()}
            i += 1

    def compute_loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        pred = model(batch["x"], self.head)
        loss = ((pred.float() - batch["y"]) ** 2).mean()
        return loss, {"mse": float(loss.detach())}

    def validate(self, model: nn.Module) -> dict[str, float]:
        batch = self._examples((self.seed, self.task_id, 10**7), 32)  # a key no training batch uses
        loss, _ = self.compute_loss(model, batch)
        return {"mse": float(loss.detach())}


def build(cfg: TrainConfig, batch_size: int, rank: int = 0, world_size: int = 1) -> tuple[ToyModel, list[ToyTask]]:
    """Model (initialised from cfg.seed) and two mixed tasks (weights 2:1)."""
    torch.manual_seed(cfg.seed)
    model = ToyModel(cfg.dropout)
    tasks = [ToyTask("reg_a", 2.0, 1, "a", batch_size, cfg.seed, rank, world_size),
             ToyTask("reg_b", 1.0, 2, "b", batch_size, cfg.seed, rank, world_size)]
    torch.manual_seed(cfg.seed + 1000 + rank)  # dropout stream, distinct per rank
    return model, tasks


def main(argv: Sequence[str] | None = None) -> Trainer:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--hang_after_step", type=int, default=-1)
    parser.add_argument("--die_rank", type=int, default=-1)
    parser.add_argument("--die_step", type=int, default=-1)
    parser.add_argument("--die_mode", choices=["exit", "hang"], default="exit")
    parser.add_argument("--dump_params", default="", help="file for the final weights; {rank} is replaced")
    opts, rest = parser.parse_known_args(argv)
    cfg = parse_args_and_config(TrainConfig, rest)
    info = du.init_distributed(timeout_s=cfg.dist_timeout_s)
    model, tasks = build(cfg, opts.batch, info.rank, info.world_size)

    def hooks(trainer: Trainer) -> None:
        if trainer.step == opts.hang_after_step:
            print(f"HANG {trainer.step}", flush=True)
            time.sleep(600)
        if trainer.step == opts.die_step and info.rank == opts.die_rank:
            if opts.die_mode == "hang":
                time.sleep(600)
            os._exit(3)

    trainer = Trainer(model, tasks, cfg, device=torch.device("cpu"), callbacks=[hooks])
    try:
        trainer.train()
        if opts.dump_params:
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                       opts.dump_params.format(rank=info.rank))
    finally:
        du.shutdown()
    return trainer


if __name__ == "__main__":
    main()


def collectives_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """Spawned by tests: exercises the collectives of utils.distributed on a gloo group of ``world_size``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    du.init_distributed(timeout_s=30)
    try:
        torch.manual_seed(rank)  # different weights per rank, so broadcast_params has something to do
        model = nn.Linear(3, 2)
        du.broadcast_params(model)
        only_rank0, nobody, everyone = (nn.Parameter(torch.zeros(2)) for _ in range(3))
        if rank == 0:
            only_rank0.grad = torch.tensor([2.0, 4.0])
        everyone.grad = torch.full((2,), float(rank + 1))
        du.all_reduce_grads([only_rank0, nobody, everyone], bucket_bytes=8)  # tiny buckets: several rounds
        result = {"weight": model.weight.detach(), "only_rank0": only_rank0.grad, "nobody": nobody.grad,
                  "everyone": everyone.grad, "mean": du.all_reduce_mean(torch.tensor([float(rank)])),
                  "gathered": du.all_gather_object({"rank": rank}), "is_main": du.is_main()}
        du.barrier()
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        du.shutdown()
