#!/usr/bin/env python
"""UC2 pretraining: MLM, ITM, MRTM and VTLM (plus the MRC/MRFR ablations) mixed by ``mix_ratio``; and the
MMT seed's VTLM-C / TLM pretraining (tasks ``vtlmc`` / ``tlmc``) when ``model_config`` names an
``"architecture": "xlm"`` config (``config/vtlmc_demo.json``).

    python pretrain.py --config config/uc2_pretrain.json [--key value ...]
    torchrun --nproc_per_node 8 pretrain.py --config config/uc2_pretrain.json
    horovodrun -np 8 python pretrain.py --config config/uc2_pretrain.json

The run directory (``output_dir``) receives hps.json, model.json, log.txt, tb/ and ckpt/; the final
weights are also written as ``model_final.pt`` with the original UC2 key names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence


def build_trainer(cfg, callbacks: Sequence[Callable] = ()):
    """Join the job, build the model (initial weights included) and the tasks of ``cfg``; the
    :class:`training.trainer.Trainer` returned has not trained yet (tests validate the step-0 model with it).

    ``callbacks`` are passed to the trainer (called as ``cb(trainer)`` after every optimizer step).
    """
    from data.img_db import ImgDb
    from tasks.build import build_pretrain_tasks
    from data.tokenizer import load_tokenizer
    from model.model import UC2ForPretraining
    from model.xlm import XlmModel, is_xlm_config_file, load_xlm_checkpoint, resolve_xlm_config
    from utils.errors import ConfigError
    from training.setup import init_weights, resolve_model_config, start_run
    from utils.device import pick_device
    from training.trainer import Trainer

    if not cfg.train_datasets:
        raise ConfigError("train_datasets: expected at least one training source")
    info = start_run(cfg)
    device = pick_device()
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.xlmr_dir)
    first_img = ImgDb(cfg.train_datasets[0].img[0], cfg.conf_th, cfg.max_bb, cfg.min_bb, cfg.num_bb)
    if cfg.model_config and is_xlm_config_file(cfg.model_config):  # the MMT seed's model (VTLM-C, TLM)
        model_config = resolve_xlm_config(cfg.model_config, vocab_size=tokenizer.vocab_size,
                                          pad_index=tokenizer.pad_id, mask_index=tokenizer.mask_id,
                                          img_dim=first_img.feat_dim, num_classes=first_img.label_dim,
                                          dropout=cfg.dropout)
        model = XlmModel(model_config)
        if cfg.checkpoint:
            load_xlm_checkpoint(model, cfg.checkpoint)
        tasks = build_pretrain_tasks(cfg, tokenizer, info.rank, info.world_size, device)
        return Trainer(model, tasks, cfg, device=device, model_config=model_config.to_dict(), callbacks=callbacks)
    model_config = resolve_model_config(cfg, first_img.feat_dim, first_img.label_dim, cfg.xlmr_dir)
    if model_config.vocab_size != tokenizer.vocab_size:
        raise ConfigError(f"model vocab_size {model_config.vocab_size} != tokenizer {tokenizer.path} "
                          f"vocabulary {tokenizer.vocab_size}")
    model = UC2ForPretraining(model_config)
    ea = cfg.early_adaptation
    if ea is not None and ea.num_train_steps > 0 and not ea.init_from:
        raise ConfigError("early_adaptation: train it with scripts/early_adaptation.py, then set "
                          "early_adaptation.init_from to its output")
    init_weights(model, cfg, cfg.xlmr_dir, partial=(ea.init_from,) if ea is not None and ea.init_from else ())
    tasks = build_pretrain_tasks(cfg, tokenizer, info.rank, info.world_size, device)
    return Trainer(model, tasks, cfg, device=device, model_config=model_config.to_dict(), callbacks=callbacks)


def main(argv: list[str] | None = None, callbacks: Sequence[Callable] = ()) -> Path:
    """Parse the command line (``argv``, default ``sys.argv[1:]``), train, write ``model_final.pt``."""
    from model.weights import save_uc2_checkpoint
    from model.xlm import XlmModel, save_xlm_checkpoint
    from utils import distributed as du
    from utils.config import parse_args_and_config
    from training.run_config import PretrainConfig

    cfg = parse_args_and_config(PretrainConfig, argv)
    trainer = build_trainer(cfg, callbacks)
    trainer.train()
    final = Path(cfg.output_dir) / "model_final.pt"
    if du.is_main():
        save = save_xlm_checkpoint if isinstance(trainer.model, XlmModel) else save_uc2_checkpoint
        save(trainer.model, final)
    du.barrier()
    return final


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
