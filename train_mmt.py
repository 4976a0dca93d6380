#!/usr/bin/env python
"""Fine-tune an encoder-decoder for multimodal (MMT) or text-only (NMT) translation.

    python train_mmt.py --config config/mmt_demo.json [--use_images false --output_dir ...]
    torchrun --nproc_per_node 8 train_mmt.py --config ...

Initialised from a VTLM-C / TLM checkpoint (``arch`` xlm), a UC2 checkpoint or XLM-R weights (``arch`` uc2),
or random; the decoder from the same weights with cross-attention copied from self-attention. Validation
BLEU (beam search) picks ``ckpt/model_best.pt``; training stops after ``patience`` validations without a new
best; the run resumes from its latest checkpoint when started again.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence


def main(argv: Sequence[str] | None = None, callbacks: Sequence[Callable] = ()) -> dict[str, float]:
    """Train; returns the last validation metrics (``{task}/bleu``, ``{task}/chrf``). ``callbacks`` go to the
    trainer (``cb(trainer)`` after every optimizer step)."""
    from data.img_db import ImgDb
    from data.tokenizer import load_tokenizer
    from utils import distributed as du
    from utils.config import ConfigError, parse_args_and_config
    from training.mmt_config import MmtConfig
    from tasks.translation_setup import build_translation_model, build_translation_task
    from training.setup import start_run
    from utils.device import pick_device
    from training.trainer import Trainer

    cfg = parse_args_and_config(MmtConfig, argv)
    if not cfg.train_db:
        raise ConfigError("train_db: expected the training split's parallel txt_db")
    info = start_run(cfg)
    try:
        device = pick_device()
        tokenizer = load_tokenizer(cfg.tokenizer)
        img_db = ImgDb(cfg.img_db, cfg.conf_th, cfg.max_bb, cfg.min_bb, cfg.num_bb)
        model, model_config = build_translation_model(cfg, tokenizer, img_db)
        task = build_translation_task(cfg, tokenizer, img_db, info.rank, info.world_size, device)
        best = f"{task.name}/bleu" if cfg.val_db and cfg.valid_steps > 0 else None
        trainer = Trainer(model, [task], cfg, device=device, model_config=model_config, best_metric=best,
                          patience=cfg.patience or None, callbacks=callbacks)
        return trainer.train()
    finally:
        du.shutdown()


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
