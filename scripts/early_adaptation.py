#!/usr/bin/env python
"""Early Adaptation: warm up the image projection towards the XLM-R embeddings of detector class words.

    python scripts/early_adaptation.py --xlmr XLMR_DIR --img_db IMG_SET_DIR [IMG_SET_DIR ...] \\
        --label_dir LABEL_DIR --langs en [de fr ...] --out ea.pt \\
        [--tokenizer TOK_DIR --steps 2000 --lr 1e-4 --tau 0.1 --regions_per_batch 2048 --top_k K \\
         --no_layer_norm --init_checkpoint FILE --device cuda --seed 0]

XLMR_DIR is a local Hugging Face XLM-R folder (config.json + weights; also the tokenizer unless
--tokenizer is given). LABEL_DIR holds ``objects_vocab_{lang}.txt`` (see data/labels.py). Image
databases must store ``soft_labels``. The output is a flat state dict of the trained
``roberta.img_embeddings.*`` tensors (original key names, fp32), plus ``OUT.json`` with the settings
and the losses; pretraining starts from it with ``load_uc2_checkpoint(model, OUT, allow_partial=True)``
after ``init_from_xlmr``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from utils.atomic import atomic_torch_save, atomic_write_json
from utils.errors import DataError
from data.img_db import ImgDb
from data.labels import LabelVocab
from data.tokenizer import load_tokenizer
from model.config import UC2ModelConfig
from model.early_adaptation import (class_word_embeddings, ea_state_dict, region_batches,
                                    run_early_adaptation)
from model.model import UC2ForPretraining
from model.weights import init_from_xlmr, load_uc2_checkpoint

logger = logging.getLogger("early_adaptation")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--xlmr", type=Path, required=True, help="local Hugging Face XLM-R folder")
    p.add_argument("--img_db", type=Path, nargs="+", required=True, help="image set folders (img_db)")
    p.add_argument("--label_dir", type=Path, required=True, help="folder of objects_vocab_{lang}.txt")
    p.add_argument("--langs", nargs="+", default=["en"], help="class-word languages (loss averaged)")
    p.add_argument("--out", type=Path, required=True, help="output state dict file")
    p.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: --xlmr)")
    p.add_argument("--init_checkpoint", type=Path, help="UC2 checkpoint to continue from (optional)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--tau", type=float, default=0.1, help="softmax temperature over cosines")
    p.add_argument("--regions_per_batch", type=int, default=2048)
    p.add_argument("--top_k", type=int, help="restrict to each region's top-k detector classes")
    p.add_argument("--no_layer_norm", action="store_true", help="adapt img_linear alone (no img_layer_norm)")
    p.add_argument("--conf_th", type=float, default=0.2)
    p.add_argument("--max_bb", type=int, default=100)
    p.add_argument("--min_bb", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def build_model(args: argparse.Namespace, img_dbs: list[ImgDb]) -> UC2ForPretraining:
    """Model shaped by the XLM-R config and the image features, initialised from XLM-R."""
    dims = {(db.feat_dim, db.label_dim) for db in img_dbs}
    if len(dims) != 1 or None in next(iter(dims)):
        raise DataError(f"image dbs {[str(d.db_dir) for d in img_dbs]}: need one feature width and stored "
                        f"soft_labels of one width, got (D, C) = {sorted(dims, key=str)}")
    feat_dim, label_dim = dims.pop()
    config = UC2ModelConfig.from_json(args.xlmr / "config.json")
    config = UC2ModelConfig.from_dict({**config.to_dict(), "img_dim": feat_dim, "img_label_dim": label_dim})
    model = UC2ForPretraining(config)
    init_from_xlmr(model, args.xlmr)
    if args.init_checkpoint:
        load_uc2_checkpoint(model, args.init_checkpoint, allow_partial=True)
    return model.to(args.device)


def class_embeddings(args: argparse.Namespace, model: UC2ForPretraining) -> torch.Tensor:
    """(G, C, H): per language, the mean XLM-R embedding of each class word."""
    tokenizer = load_tokenizer(args.tokenizer or args.xlmr)
    vocab = LabelVocab.load(args.label_dir, args.langs, model.config.img_label_dim, tokenizer)
    word_emb = model.roberta.embeddings.word_embeddings.weight.detach()
    return torch.stack([class_word_embeddings(word_emb, torch.from_numpy(vocab.token_ids[lang]),
                                              torch.from_numpy(vocab.lengths[lang])) for lang in vocab.langs])


def save_outputs(args: argparse.Namespace, model: UC2ForPretraining, logs: list[dict]) -> None:
    """State dict and its JSON sidecar, each written to a temp file and renamed."""
    atomic_torch_save(ea_state_dict(model), args.out)
    meta = {"args": vars(args),
            "first": logs[0], "last": logs[-1], "kl": [round(r["kl"], 5) for r in logs]}
    atomic_write_json(meta, args.out.with_name(args.out.name + ".json"), indent=1, sort_keys=False, default=str)


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(args.seed)
    img_dbs = [ImgDb(d, conf_th=args.conf_th, max_bb=args.max_bb, min_bb=args.min_bb) for d in args.img_db]
    model = build_model(args, img_dbs)
    class_emb = class_embeddings(args, model)
    logs = run_early_adaptation(model, region_batches(img_dbs, args.regions_per_batch, args.seed),
                                args.steps, args.lr, args.tau, class_emb=class_emb,
                                use_layer_norm=not args.no_layer_norm, top_k=args.top_k)
    save_outputs(args, model, logs)
    logger.info("wrote %s (kl %.4f -> %.4f)", args.out, logs[0]["kl"], logs[-1]["kl"])
    return args.out


if __name__ == "__main__":
    try:
        main()
    except DataError as err:
        sys.exit(f"error: {err}")
