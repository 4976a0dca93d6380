#!/usr/bin/env python
"""Multilingual image-text retrieval fine-tuning, then the test-set table.

    python train_itm.py --config config/itm_m30k_all_lang.json [--num_train_steps 1000 ...]
    torchrun --nproc_per_node 8 train_itm.py --config config/itm_m30k_all_lang.json

Builds ``UC2ForImageTextRetrieval`` from ``model_config``, loads ``checkpoint`` (a pretraining checkpoint:
``rank_output`` starts from ``itm_output``'s match row), trains the ``itm_rank`` task with the shared
trainer (validation recall every ``valid_steps``; the best mean AR is kept as ``ckpt/model_best.pt``),
then evaluates the best weights on ``test_datasets`` and writes ``results.md``/``results.json``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from data.img_db import ImgDb
from tasks.base import LoaderOptions
from tasks.retrieval import PairSource, RankSettings, RetrievalTask
from data.txt_db import TxtDb
from model.config import UC2ModelConfig
from model.model import UC2ForImageTextRetrieval
from model.weights import read_state_file
from utils import distributed as du
from evaluation import itm_eval
from utils.config import parse_args_and_config
from training.itm_config import RetrievalConfig
from training.setup import init_weights, resolve_model_config
from training.trainer import Trainer

LOG = logging.getLogger("train_itm")
TASK_NAME = "itm_rank"


def img_rule(cfg) -> dict:
    """The region-selection rule every image db of the run is opened with."""
    return {"conf_th": cfg.conf_th, "max_bb": cfg.max_bb, "min_bb": cfg.min_bb, "num_bb": cfg.num_bb}


def build_model(cfg: RetrievalConfig) -> tuple[UC2ForImageTextRetrieval, UC2ModelConfig]:
    """Retrieval model shaped like every other script's (training.setup: model_config, feature width from the
    first training image db, the run's dropout), initialised from ``cfg.checkpoint`` when given."""
    first = cfg.train_datasets[0]
    img_db = ImgDb(first.img_db, **img_rule(cfg))
    mconf = resolve_model_config(cfg, img_db.feat_dim, img_db.label_dim)
    torch.manual_seed(cfg.seed)
    model = UC2ForImageTextRetrieval(mconf)
    init_weights(model, cfg)
    return model, mconf


def build_task(cfg: RetrievalConfig) -> RetrievalTask:
    """The itm_rank task over the merged training sets, validating on ``val_datasets``."""
    rule = img_rule(cfg)
    parts = [(TxtDb(s.txt_db, max_txt_len=cfg.max_txt_len), ImgDb(s.img_db, **rule)) for s in cfg.train_datasets]
    settings = RankSettings(cfg.negative_size, cfg.margin, cfg.hard_neg_every, cfg.hard_neg_pool)
    return RetrievalTask(
        TASK_NAME, PairSource(parts), settings, batch_size=cfg.train_batch_size, seed=cfg.seed,
        rank=du.get_rank(), world_size=du.get_world_size(),
        val_sets=[itm_eval.open_retrieval_set(s, rule) for s in cfg.val_datasets],
        score_settings=score_settings(cfg, "rank"),
        options=LoaderOptions(num_workers=cfg.n_workers))


def lr_multipliers(cfg: RetrievalConfig) -> dict[str, float] | None:
    """Per-prefix learning-rate multipliers: the XLM-R text embeddings may get their own rate."""
    return {"roberta.embeddings": cfg.embeddings_lr_mult} if cfg.embeddings_lr_mult != 1.0 else None


def score_settings(cfg, head: str) -> itm_eval.ScoreSettings:
    return itm_eval.ScoreSettings(head=head, txt_block=cfg.eval.txt_block, img_block=cfg.eval.img_block,
                                  precision=cfg.precision)


def final_evaluation(cfg: RetrievalConfig, model: torch.nn.Module, best_path: Path) -> str:
    """Evaluate the best checkpoint (else the final weights) on the test sets; returns the Markdown."""
    if best_path.is_file():
        model.load_state_dict(read_state_file(best_path))
        LOG.info(f"test evaluation with the best validation weights {best_path}")
    out_dir = Path(cfg.results_dir or Path(cfg.output_dir) / "results")
    results = itm_eval.evaluate_sets(model, cfg.test_datasets, score_settings(cfg, "rank"), cfg.setting,
                                     lambda spec: itm_eval.open_retrieval_set(spec, img_rule(cfg)),
                                     out_dir, cfg.eval.save_scores)
    return itm_eval.write_results(out_dir, results)


def main(argv: list[str] | None = None) -> str:
    """Fine-tune, evaluate, print the results table (rank 0); returns its Markdown ('' without test sets)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = parse_args_and_config(RetrievalConfig, argv)
    du.init_distributed(timeout_s=cfg.dist_timeout_s)
    try:
        model, mconf = build_model(cfg)
        task = build_task(cfg)
        trainer = Trainer(model, [task], cfg, model_config=mconf.to_dict(), lr_multipliers=lr_multipliers(cfg),
                          best_metric=f"{TASK_NAME}/r_mean" if cfg.val_datasets else None)
        trainer.train()
        table = final_evaluation(cfg, trainer.model, trainer.ckpt.dir / "model_best.pt") if cfg.test_datasets else ""
        if table and du.is_main():
            print(table, flush=True)
        return table
    finally:
        du.shutdown()


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
