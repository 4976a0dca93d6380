#!/usr/bin/env python
"""Dual-encoder training: a native English dual encoder, or MLA's language acquirers on a frozen one.

    python train_mla.py --config config/mla_demo_native.json          # English dual encoder (stage native)
    python train_mla.py --config config/mla_demo_nlt.json             # NLT: acquirers regress English features
    python train_mla.py --config config/mla_demo_le.json              # LE: from the NLT weights, image contrast
    torchrun --nproc_per_node 8 train_mla.py --config config/mla_cc300k_nlt.json

Writes the run directory (hps.json, model.json, log.txt, ckpt/), ``model_final.pt`` (stage native: the whole
dual encoder; MLA stages: only the trained parts, θ_emb and acquirers, which ``acquisition.init_from`` of the
next stage reads), and the test table (``results/results.md``) through the project's retrieval metrics.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence


def main(argv: list[str] | None = None, callbacks: Sequence[Callable] = ()) -> str:
    """Train one stage and evaluate it; returns the results Markdown ('' without test sets).
    ``callbacks`` go to the trainer (``cb(trainer)`` after every optimizer step)."""
    import torch

    from utils import distributed as du
    from utils.atomic import atomic_torch_save
    from utils.config import parse_args_and_config
    from training.mla_config import DualRunConfig
    from evaluation.dual_eval import evaluate_run
    from tasks.mla import build_mla_tasks
    from training.mla_setup import build_acquisition, le_temperature, load_native, new_native
    from training.setup import start_run
    from training.trainer import Trainer
    from utils.device import pick_device

    cfg = parse_args_and_config(DualRunConfig, argv)
    start_run(cfg)
    try:
        device = pick_device()
        if cfg.stage == "native":
            from data.img_db import ImgDb
            model = new_native(cfg, ImgDb(cfg.img_db, cfg.conf_th, cfg.max_bb, cfg.min_bb, cfg.num_bb).feat_dim)
            model_config, temperature = model.cfg.to_dict(), None
        else:
            native = load_native(cfg)
            model = build_acquisition(cfg, native)
            model_config = {"native": native.cfg.to_dict(), "acquisition": model.cfg.to_dict()}
            temperature = le_temperature(cfg, native)
        trainer = Trainer(model, build_mla_tasks(cfg, device, temperature), cfg, device=device, model_config=model_config,
                          callbacks=callbacks)
        trainer.train()
        final = trainer.model.state_dict() if cfg.stage == "native" else trainer.model.trainable_state_dict()
        if du.is_main():
            atomic_torch_save(final, Path(cfg.output_dir) / "model_final.pt")
        table = evaluate_run(cfg, trainer.model) if cfg.test_datasets else ""
        if table and du.is_main():
            print(table, flush=True)
        return table
    finally:
        du.shutdown()


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
