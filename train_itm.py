#!/usr/bin/env python
"""Multilingual image-text retrieval fine-tuning, then the test-set table.

    python train_itm.py --config config/itm_m30k_all_lang.json [--num_train_steps 1000 ...]
    torchrun --nproc_per_node 8 train_itm.py --config config/itm_m30k_all_lang.json

Same as ``train.py --task itm_rank`` (the task and its run spec are in tasks/retrieval.py): builds the
backbone with ``itm_output``/``rank_output`` from ``model_config``, loads ``checkpoint`` (a pretraining
checkpoint: ``rank_output`` starts from ``itm_output``'s match row), trains the ``itm_rank`` task with the
shared trainer (validation recall every ``valid_steps``; the best mean AR is kept as
``ckpt/model_best.pt``), then evaluates the best weights on ``test_datasets`` and writes
``results.md``/``results.json``.
"""
from __future__ import annotations

import train
from tasks.retrieval import TASK_NAME, lr_multipliers  # noqa: F401  (lr_multipliers: kept for callers)


def build_model(cfg):
    """The retrieval model of a parsed ``RetrievalConfig`` with its initial weights, and its config dict."""
    from tasks.context import run_context
    from tasks.registry import run_spec

    spec, ctx = run_spec(TASK_NAME), run_context(cfg)
    return spec.build_model(cfg, ctx, spec.build_tasks(cfg, ctx))


def main(argv: list[str] | None = None) -> str:
    """Fine-tune, evaluate, print the results table (rank 0); returns its Markdown ('' without test sets)."""
    return train.run(TASK_NAME, argv)


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
