#!/usr/bin/env python
"""Evaluate image-text retrieval on one or several test sets; one results table.

    python inf_itm.py --config config/itm_eval_m30k_coco.json --checkpoint /storage/ckpt/model_best.pt
    torchrun --nproc_per_node 8 inf_itm.py --config ...

Same as ``evaluate.py --task itm_rank`` (tasks/retrieval.py). Scores every caption against every image of
each test set with the cross-encoder (evaluation/itm_eval.py), computes Recall@1/5/10 both ways and AR
(COCO 1K: mean over ``coco_folds`` folds), and writes ``results.md``/``results.json`` (paper table-1
layout, R@K details) and ``scores_{name}.npz`` into ``output_dir``. A pretraining checkpoint (no
``rank_output``) is evaluated zero-shot with the ITM head's match score (``head`` "auto" picks this).
"""
from __future__ import annotations

import evaluate
from tasks.retrieval import TASK_NAME


def main(argv: list[str] | None = None) -> list[dict]:
    """Evaluate, write and print the table (rank 0); returns the per-set results."""
    return evaluate.run(TASK_NAME, argv)


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
