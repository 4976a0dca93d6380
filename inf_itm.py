#!/usr/bin/env python
"""Evaluate image-text retrieval on one or several test sets; one results table.

    python inf_itm.py --config config/itm_eval_m30k_coco.json --checkpoint /storage/ckpt/model_best.pt
    torchrun --nproc_per_node 8 inf_itm.py --config ...

Scores every caption against every image of each test set with the cross-encoder (evaluation/itm_eval.py),
computes Recall@1/5/10 both ways and AR (COCO 1K: mean over ``coco_folds`` folds), and writes
``results.md``/``results.json`` (paper table-1 layout, R@K details) and ``scores_{name}.npz`` into
``output_dir``. A pretraining checkpoint (no ``rank_output``) is evaluated zero-shot with the ITM head's
match score (``head`` "auto" picks this by itself).
"""
from __future__ import annotations

import logging

import torch

from model.config import UC2ModelConfig
from model.model import UC2ForImageTextRetrieval
from model.weights import load_uc2_checkpoint, read_state_file
from utils import distributed as du
from evaluation import itm_eval
from utils.config import parse_args_and_config
from training.itm_config import RetrievalEvalConfig
from utils.device import pick_device

LOG = logging.getLogger("inf_itm")


def load_model(cfg: RetrievalEvalConfig) -> tuple[UC2ForImageTextRetrieval, str]:
    """The model with the checkpoint's weights on this rank's device, and the head to score with."""
    mconf = UC2ModelConfig.from_json(cfg.model_config) if cfg.model_config else UC2ModelConfig()
    model = UC2ForImageTextRetrieval(mconf)
    state = read_state_file(cfg.checkpoint)
    head = cfg.head
    if head == "auto":
        head = "rank" if "rank_output.weight" in state else "itm"
    # A pretraining checkpoint fills rank_output from the ITM match row; the "itm" head ignores it anyway.
    LOG.info(load_uc2_checkpoint(model, state).summary())
    return model.to(pick_device()).eval(), head


def main(argv: list[str] | None = None) -> list[dict]:
    """Evaluate, write and print the table (rank 0); returns the per-set results."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = parse_args_and_config(RetrievalEvalConfig, argv)
    du.init_distributed()
    try:
        model, head = load_model(cfg)
        setting = cfg.setting or ("Zero-shot (ITM head)" if head == "itm" else "Fine-tuned")
        settings = itm_eval.ScoreSettings(head=head, txt_block=cfg.eval.txt_block, img_block=cfg.eval.img_block,
                                          precision=cfg.precision)
        rule = {"conf_th": cfg.conf_th, "max_bb": cfg.max_bb, "min_bb": cfg.min_bb, "num_bb": cfg.num_bb}
        with torch.no_grad():
            results = itm_eval.evaluate_sets(model, cfg.test_datasets, settings, setting,
                                             lambda spec: itm_eval.open_retrieval_set(spec, rule),
                                             cfg.output_dir, cfg.eval.save_scores)
        table = itm_eval.write_results(cfg.output_dir, results)
        if du.is_main():
            print(table, flush=True)
        return results
    finally:
        du.shutdown()


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
