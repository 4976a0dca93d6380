"""Fine-tune UC2 for VQA (VQA v2, Japanese VG-VQA, the demo corpus) with the shared trainer.

Usage::

    python train_vqa.py --config config/vqa_v2.json [--learning_rate 5e-5 --output_dir /storage/vqa ...]
    torchrun --nproc_per_node 8 train_vqa.py --config config/vqa_v2.json

Starts from ``checkpoint`` (a pretraining or released UC2 state dict; ``vqa_output`` is freshly initialised)
or from random weights. The answer vocabulary is stored in the run directory as ``ans2label.json`` and
``label2ans.json`` beside ``ckpt/``, with ``majority_answer.json`` (the most common training answer, the
baseline ``inf_vqa.py`` prints). Validation (``val_txt_db``) reports ``vqa/vqa_score`` and
``vqa/accuracy``; ``ckpt/model_best.pt`` keeps the best VQA score.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from tasks.vqa import build_vqa_task, load_label2ans
from model.config import UC2ModelConfig
from model.model import UC2ForVQA
from utils import distributed as du
from utils.device import pick_device
from utils.atomic import atomic_write_json
from utils.checkpoint import check_run_dir
from utils.config import parse_args_and_config, to_dict
from utils.errors import ConfigError
from training.setup import init_weights, resolve_model_config, start_run
from training.trainer import Trainer
from training.vqa_config import VQA_TASK_NAME, VQAConfig
from evaluation.vqa_metrics import most_common_answer

VOCAB_FILE = "ans2label.json"
LABELS_FILE = "label2ans.json"
MAJORITY_FILE = "majority_answer.json"


def answer_vocab(cfg: VQAConfig) -> list[str]:
    """label2ans of the run: from ``cfg.ans2label`` or the first training txt_db's ``ans2label.json``."""
    path = Path(cfg.ans2label) if cfg.ans2label else Path(cfg.train_txt_dbs[0]) / VOCAB_FILE
    return load_label2ans(path)


def store_vocab(output_dir: str | Path, label2ans: Sequence[str]) -> None:
    """Write the answer vocabulary into the run directory; refuse to replace a different one (resume)."""
    out = Path(output_dir)
    existing = out / LABELS_FILE
    if existing.is_file() and json.loads(existing.read_text(encoding="utf-8")) != list(label2ans):
        raise ConfigError(f"{existing}: this run directory was trained with another answer vocabulary; "
                          f"use a new output_dir")
    atomic_write_json({a: i for i, a in enumerate(label2ans)}, out / VOCAB_FILE)
    atomic_write_json(list(label2ans), out / LABELS_FILE)


def store_majority(output_dir: str | Path, task) -> None:
    """Write the most common training answer (over all annotations) unless already there (resume)."""
    path = Path(output_dir) / MAJORITY_FILE
    if path.is_file():
        return
    source = task.train_data.source
    answers = [a for a in (source.text(i).fields.get("answers") for i in range(len(source))) if a]
    if not answers:
        return  # an unannotated training set has no baseline; inf_vqa then prints none
    atomic_write_json({"answer": most_common_answer([[str(x) for x in a] for a in answers]),
                       "n_questions": len(answers)}, path)


def build_model(cfg: VQAConfig, num_answers: int, img_db) -> tuple[UC2ForVQA, UC2ModelConfig]:
    """UC2ForVQA shaped by ``model_config`` and the image features, with the run's dropout, initialised
    from ``cfg.checkpoint`` (pretraining or released UC2 weights; ``vqa_output`` starts fresh) when given."""
    config = resolve_model_config(cfg, img_db.feat_dim, img_db.label_dim)
    torch.manual_seed(cfg.seed)  # the fresh answer head starts the same on every rank and run
    model = UC2ForVQA(config, num_answers)
    init_weights(model, cfg)
    return model, config


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Train; returns the last validation metrics (``vqa/vqa_score``, ``vqa/accuracy``, ...)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = parse_args_and_config(VQAConfig, argv)
    info = start_run(cfg)
    try:
        device = pick_device()
        label2ans = answer_vocab(cfg)
        task = build_vqa_task(cfg, label2ans, info.rank, info.world_size, device)
        model, model_config = build_model(cfg, len(label2ans), task.train_data.source.parts[0][1])
        if du.is_main():
            # Refuse a directory holding another run before writing anything into it.
            check_run_dir(cfg.output_dir, to_dict(cfg), resuming=cfg.resume != "none")
            Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
            store_vocab(cfg.output_dir, label2ans)
            store_majority(cfg.output_dir, task)
        du.barrier()
        best = f"{VQA_TASK_NAME}/vqa_score" if cfg.val_txt_db and cfg.valid_steps > 0 else None
        trainer = Trainer(model, [task], cfg, device=device, model_config=model_config.to_dict(),
                          lr_multipliers=cfg.lr_multipliers(), best_metric=best)
        return trainer.train()
    finally:
        du.shutdown()


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
