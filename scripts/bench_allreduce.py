#!/usr/bin/env python
"""Gradient all-reduce cost per step on 2 gloo ranks: the project's path against DDP, on the UC2 model.

    python scripts/bench_allreduce.py [--steps 12] [--hidden 256] [--layers 4] [--vocab 30000]

Every step, each rank runs forward + backward of the UC2 backbone on its own synthetic packed batch and
then averages the gradients, alternately (interleaved, so both see the same machine load):

* ``after_backward``: ``loss.backward()`` then :func:`utils.distributed.all_reduce_grads` (flat 32 MB
  buckets, one blocking all-reduce each, after the whole backward), what utils/trainer.py does;
* ``ddp``: ``DistributedDataParallel(find_unused_parameters=True)`` (the heads get no gradient), whose
  25 MB buckets are all-reduced while the backward still runs.

Prints one JSON object: median step seconds of both, the no-communication backward alone, and the
communication share. Gradients of both paths are checked equal. Rank 0 reports.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script from any cwd: make the repository's packages importable
    _ROOT = str(Path(__file__).resolve().parents[1])
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_model(args):
    from model.config import UC2ModelConfig
    from model.model import UC2ForPretraining

    torch.manual_seed(0)
    config = UC2ModelConfig.xlmr_base(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                                      num_attention_heads=max(1, args.hidden // 64), intermediate_size=4 * args.hidden,
                                      img_dim=2048, img_label_dim=1601, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0)
    return UC2ForPretraining(config)


def make_batch(rank: int, vocab: int, batch: int = 16, txt: int = 40, regions: int = 36) -> dict:
    from data.collate import collate_backbone, xlmr_position_ids

    gen = torch.Generator().manual_seed(rank)
    examples = [{"input_ids": torch.randint(5, vocab, (txt,), generator=gen), "position_ids": xlmr_position_ids(txt),
                 "img_feat": torch.rand(regions, 2048, generator=gen), "img_pos_feat": torch.rand(regions, 7, generator=gen)}
                for _ in range(batch)]
    return collate_backbone(examples)


class BackboneLoss(torch.nn.Module):
    """The UC2 model (heads included, unused) with a forward that returns a scalar from the backbone."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        from tasks.base import run_backbone

        return run_backbone(self.model, batch).float().pow(2).mean()


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def worker(rank: int, world: int, port: int, args, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from utils import distributed as du

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    du.init_distributed(timeout_s=300)
    plain, wrapped = BackboneLoss(make_model(args)), BackboneLoss(make_model(args))
    ddp = DistributedDataParallel(wrapped, find_unused_parameters=True)  # the heads get no gradient
    batch = make_batch(rank, args.vocab)
    params = list(plain.parameters())

    def ours():
        plain.zero_grad(set_to_none=True)
        plain(batch).backward()
        du.all_reduce_grads(params)

    def ddp_step():
        ddp.zero_grad(set_to_none=True)
        ddp(batch).backward()

    times = {"after_backward": [], "ddp": [], "backward_only": []}
    for step in range(args.steps + 2):
        t_ours = _timed(ours)
        t_ddp = _timed(ddp_step)
        t_local = _timed(lambda: (plain.zero_grad(set_to_none=True), plain(batch).backward()))
        if step >= 2:  # warm-up
            times["after_backward"].append(t_ours)
            times["ddp"].append(t_ddp)
            times["backward_only"].append(t_local)
    ours()
    ddp_step()
    same = all(torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6)
               for a, b in zip(plain.parameters(), wrapped.parameters()) if a.grad is not None and b.grad is not None)
    if rank == 0:
        med = {k: statistics.median(v) for k, v in times.items()}
        grads = sum(p.numel() for p in plain.parameters() if p.grad is not None)
        result = {"world_size": world, "backend": "gloo", "steps": args.steps, "grad_params": grads,
                  "grad_mb": grads * 4 / 2**20, "median_step_s": med, "grads_equal": same,
                  "comm_s_after_backward": med["after_backward"] - med["backward_only"],
                  "comm_s_ddp": med["ddp"] - med["backward_only"],
                  "model": {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab}}
        Path(out).write_text(json.dumps(result, indent=1, sort_keys=True), encoding="utf-8")
    du.shutdown()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps of each path (after 2 warm-up)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=30000)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    out = args.out or Path(os.environ.get("TMPDIR", "/tmp")) / f"uc2-allreduce-{os.getpid()}.json"
    mp.spawn(worker, args=(2, _free_port(), args, str(out)), nprocs=2, join=True)
    result = json.loads(out.read_text(encoding="utf-8"))
    if args.out is None:
        out.unlink()
    print(json.dumps(result, indent=1, sort_keys=True))
    return result


if __name__ == "__main__":
    main()
