#!/usr/bin/env python
"""Turn a Hugging Face XLM-R folder into a UC2 checkpoint (no vision-language pretraining).

The result is what fine-tuning starts from in the "without pretraining" baseline: the text encoder,
embeddings and MLM head come from XLM-R, the image embeddings and the ITM head are freshly initialised
(shaped by the image database's feature width). Optionally the Early Adaptation weights are added.

    python scripts/xlmr_to_uc2.py --xlmr /pretrain/xlm-roberta-base --img_db /img/coco_train2014 \
        --out /storage/xlmr_init [--early_adaptation /storage/early_adaptation/img_linear.pt]

Writes OUT/model_final.pt (original UC2 key names) and OUT/model.json (the model config).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--xlmr", type=Path, required=True, help="Hugging Face XLM-R folder")
    p.add_argument("--img_db", type=Path, required=True, help="an image set folder: gives the feature width")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--early_adaptation", type=Path, help="Early Adaptation weights to add (optional)")
    p.add_argument("--conf_th", type=float, default=0.2)
    p.add_argument("--max_bb", type=int, default=100)
    p.add_argument("--min_bb", type=int, default=10)
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    import torch

    from data.img_db import ImgDb
    from model.config import UC2ModelConfig
    from model.model import UC2ForPretraining
    from model.weights import init_from_xlmr, load_uc2_checkpoint, save_uc2_checkpoint

    args = parse_args(argv)
    torch.manual_seed(args.seed)
    img_db = ImgDb(args.img_db, args.conf_th, args.max_bb, args.min_bb)
    values = UC2ModelConfig.from_json(args.xlmr / "config.json").to_dict()
    values.update(img_dim=img_db.feat_dim)
    if img_db.label_dim:
        values["img_label_dim"] = img_db.label_dim
    config = UC2ModelConfig.from_dict(values, source=str(args.xlmr / "config.json"))
    model = UC2ForPretraining(config)
    init_from_xlmr(model, args.xlmr)
    if args.early_adaptation:
        load_uc2_checkpoint(model, args.early_adaptation, allow_partial=True)
    args.out.mkdir(parents=True, exist_ok=True)
    config.to_json(args.out / "model.json")
    final = save_uc2_checkpoint(model, args.out / "model_final.pt")
    print(f"wrote {final} and {args.out / 'model.json'}")
    return final


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
