#!/usr/bin/env python
"""Train any registered run task: ``python train.py --task NAME --config FILE [--key value ...]``.

    python train.py --task pretrain --config config/uc2_pretrain.json
    python train.py --task itm_rank --config config/itm_m30k_all_lang.json --num_train_steps 1000
    torchrun --nproc_per_node 8 train.py --task vqa --config config/vqa_v2.json

The task's run spec (tasks/registry.py, ``RunSpec``) says which config class parses ``--config``, how the
tasks and the model are built and what happens after training; ``pretrain.py``, ``train_itm.py`` and
``train_vqa.py`` are this script with their task fixed. ``python train.py --task list`` lists the tasks.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch


def split_task(argv: Sequence[str]) -> tuple[str, list[str]]:
    """(``--task`` value, the other arguments); a ConfigError when the flag is missing."""
    from utils.errors import ConfigError

    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--task" and i + 1 < len(argv):
            return argv[i + 1], argv[:i] + argv[i + 2:]
        if arg.startswith("--task="):
            return arg.split("=", 1)[1], argv[:i] + argv[i + 1:]
    raise ConfigError("--task: required (python train.py --task NAME ...; --task list shows the names)")


def build_trainer(spec: Any, cfg: Any, callbacks: Sequence[Callable] = ()) -> tuple[Any, Any]:
    """Join the job, build the run's tasks, then its model (initial weights included) on one seed;
    returns ``(trainer, context)``; the trainer has not trained yet."""
    from tasks.context import run_context
    from training.setup import start_run
    from training.trainer import Trainer
    from utils.device import pick_device

    info = start_run(cfg)
    device = pick_device()
    ctx = (spec.make_context or (lambda c, i, d: run_context(c, None, i.rank, i.world_size, d)))(cfg, info, device)
    tasks = spec.build_tasks(cfg, ctx)
    torch.manual_seed(cfg.seed)  # fresh heads start the same on every rank and run
    model, model_config = spec.build_model(cfg, ctx, tasks)
    check_run_dbs(cfg, ctx, tasks, model_config)
    if spec.prepare is not None:
        spec.prepare(cfg, ctx, tasks)
    trainer = Trainer(model, tasks, cfg, device=device, model_config=model_config,
                      lr_multipliers=spec.lr_multipliers(cfg), best_metric=spec.best_metric(cfg),
                      patience=spec.patience(cfg), callbacks=callbacks)
    return trainer, ctx


def check_run_dbs(cfg: Any, ctx: Any, tasks: Sequence[Any], model_config: Any) -> None:
    """Every (txt_db, img_db) the run's tasks read fits the model (vocabulary, feature width) and the
    tokenizer, before the first step: a mismatch otherwise crashes mid-run or trains on meaningless ids.
    Models whose config has no ``vocab_size``/``img_dim`` (not UC2-shaped) are not checked here."""
    from types import SimpleNamespace

    from data.compat import check_parts, task_parts

    values = model_config if isinstance(model_config, dict) else vars(model_config)
    if not {"vocab_size", "img_dim"} <= set(values):
        return
    source = getattr(cfg, "model_config", "") or getattr(cfg, "xlmr_dir", "") or "XLM-R base shape"
    check_parts([part for task in tasks for part in task_parts(task)], SimpleNamespace(**values),
                f"the model ({source})", getattr(ctx, "tokenizer", None))


def run(task: str, argv: Sequence[str] | None = None, callbacks: Sequence[Callable] = ()) -> Any:
    """Train run task ``task`` with the command-line arguments ``argv``; returns the spec's result
    (pretraining: the final weights' path; retrieval: the test table; VQA: the last validation metrics)."""
    from tasks.registry import run_spec
    from utils import distributed as du
    from utils.config import parse_args_and_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    spec = run_spec(task)
    cfg = parse_args_and_config(spec.config, argv)
    try:
        trainer, ctx = build_trainer(spec, cfg, callbacks)
        metrics = trainer.train()
        return spec.finish(cfg, trainer, ctx, metrics)
    finally:
        du.shutdown()


def main(argv: Sequence[str] | None = None, callbacks: Sequence[Callable] = ()) -> Any:
    """``--task NAME`` plus the task's config arguments (``argv``, default ``sys.argv[1:]``)."""
    import sys

    from tasks.registry import known_runs

    task, rest = split_task(sys.argv[1:] if argv is None else argv)
    if task == "list":
        print("\n".join(known_runs()))
        return None
    return run(task, rest, callbacks)


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
