#!/usr/bin/env python
"""Measure fast retrieval at several k on your own sets, to choose k (``shortlist.k_img``/``k_txt``, or
``shortlist.k_fraction`` for a k that follows the gallery size).

    python scripts/shortlist_sweep.py --run_dir RUN [--split val|test] [--fractions 0.02,0.04,0.08]
                                      [--k 3/8,8/16] [--below_shortlist dual_encoder|tied] [--out sweep.json]

``RUN`` is a retrieval run (``train_itm.py`` / ``train.py --task itm_rank``) whose model carries the ``itc``
head: its ``hps.json`` gives the model config, the image rules and the sets (``val_datasets`` with
``--split val``, the default, so that k is chosen on validation data and the test sets stay untouched);
the checkpoint is ``--checkpoint``, else ``ckpt/model_best.pt``, else the newest complete step.

Each set is scored exhaustively once and embedded once; every setting then builds its shortlist
(evaluation/shortlist.build_shortlist, folds included) and reads the reranked pairs' scores from the
exhaustive matrix: the rerank scores those very pairs with the same cross-encoder (equal within 1e-5,
tests/test_shortlist.py), so a sweep costs one exhaustive evaluation, not one per k. Prints a Markdown
table per setting: the mean reranked AR, the worst language's change against exhaustive scoring, the
shortlist's recall of the positive, and how many times fewer pairs the cross-encoder scores.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file: make the project's packages importable
    sys.path.insert(0, str(REPO_ROOT))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run_dir", type=Path, required=True, help="retrieval run folder (hps.json, ckpt/)")
    parser.add_argument("--checkpoint", type=Path, help="default: ckpt/model_best.pt, else the newest step")
    parser.add_argument("--split", choices=("val", "test"), default="val", help="which sets of hps.json")
    parser.add_argument("--fractions", default="0.01,0.02,0.04,0.06,0.08,0.1",
                        help="k_fraction values (k from each gallery's size; k_max below)")
    parser.add_argument("--k_max", type=int, default=None, help="k_max for --fractions (default: ShortlistOptions')")
    parser.add_argument("--k", default="", help="fixed settings 'k_img/k_txt', comma-separated (e.g. 3/8,8/16)")
    parser.add_argument("--below_shortlist", choices=("dual_encoder", "tied"), default="dual_encoder")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    try:
        args.fraction_list = [float(x) for x in args.fractions.split(",") if x.strip()]
        args.k_list = [tuple(int(v) for v in pair.split("/")) for pair in args.k.split(",") if pair.strip()]
    except ValueError:
        parser.error(f"--fractions: expected numbers, --k: expected 'k_img/k_txt' pairs; got "
                     f"{args.fractions!r} / {args.k!r}")
    if any(len(pair) != 2 for pair in args.k_list):
        parser.error(f"--k: expected 'k_img/k_txt' pairs, got {args.k!r}")
    if not args.fraction_list and not args.k_list:
        parser.error("nothing to sweep: give --fractions and/or --k")
    return args


def settings_to_sweep(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """(label, ShortlistOptions) per setting; bad values fail here with the option's own message."""
    from training.itm_config import ShortlistOptions

    extra = {"below_shortlist": args.below_shortlist, **({"k_max": args.k_max} if args.k_max else {})}
    out = [(f"k_fraction {f:g}", ShortlistOptions(k_fraction=f, **extra)) for f in args.fraction_list]
    out += [(f"k {ki}/{kt}", ShortlistOptions(k_img=ki, k_txt=kt, **extra)) for ki, kt in args.k_list]
    return out


def default_checkpoint(run_dir: Path) -> Path:
    from utils.checkpoint import CheckpointManager
    from utils.errors import ConfigError

    path = CheckpointManager(run_dir / "ckpt").best_or_latest_model()
    if path is None:
        raise ConfigError(f"{run_dir / 'ckpt'}: no model_best.pt and no complete model_step_N.pt; pass --checkpoint")
    return path


def eval_config(args: argparse.Namespace):
    """A RetrievalEvalConfig for the run's ``--split`` sets, checkpoint and image rules."""
    from training.itm_config import RetrievalEvalConfig
    from utils.config import from_dict, load_json
    from utils.errors import ConfigError

    hps_path = args.run_dir / "hps.json"
    if not hps_path.is_file():
        raise ConfigError(f"--run_dir {args.run_dir}: no hps.json (is it a retrieval run's output_dir?)")
    hps = load_json(hps_path)
    key = f"{args.split}_datasets"
    if not hps.get(key):
        raise ConfigError(f"{hps_path}: '{key}' is empty; choose the other --split")
    checkpoint = args.checkpoint or default_checkpoint(args.run_dir)
    return from_dict(RetrievalEvalConfig, {
        "output_dir": str(args.run_dir / "sweep"), "checkpoint": str(checkpoint),
        "model_config": hps.get("model_config", ""), "test_datasets": hps[key],
        **{k: hps[k] for k in ("conf_th", "max_bb", "min_bb", "num_bb", "precision") if k in hps},
        "eval": hps.get("eval", {}), "shortlist": {"enabled": True}})


def measure_set(model, head: str, spec, cfg, settings: list[tuple[str, Any]]) -> dict[str, Any]:
    """One set: exhaustive and dual-encoder AR, then per setting the reranked AR, recall at k and pairs."""
    import numpy as np

    from evaluation import itm_eval, shortlist as sl
    from tasks.retrieval import img_rule

    dataset = itm_eval.open_retrieval_set(spec, img_rule(cfg))
    score_settings = itm_eval.ScoreSettings(head=head, txt_block=cfg.eval.txt_block, img_block=cfg.eval.img_block,
                                            precision=cfg.precision)
    full = itm_eval.score_matrix(model, dataset, score_settings)
    txt_emb, img_emb = sl.embed_set(model, dataset, cfg.shortlist.embed_batch)
    dual = (txt_emb @ img_emb.T).float().cpu().numpy()
    given = itm_eval.read_fold_file(spec.fold_file, dataset) if spec.fold_file else None
    folds = sl.fold_ids(spec.coco_folds, len(dataset.img_fnames), given)     # None unless coco_folds > 1
    out = {"name": spec.name, "lang": spec.lang,
           "exhaustive_ar": itm_eval.set_metrics(full, dataset, spec.coco_folds, folds)["r_mean"],
           "dual_ar": itm_eval.set_metrics(dual, dataset, spec.coco_folds, folds)["r_mean"], "settings": {}}
    for label, options in settings:
        short = sl.build_shortlist(txt_emb, img_emb, dataset.txt2img, options, folds)
        rerank = sl.shortlist_metrics(np.where(short.pairs, full, sl.UNSCORED), short, dataset, spec.coco_folds,
                                      folds, sl.tail_order(options, dual))
        out["settings"][label] = {"rerank_ar": rerank["r_mean"], "k_img": short.k_img, "k_txt": short.k_txt,
                                  "pairs_scored": int(short.pairs.sum()), "pairs_total": int(short.pairs.size),
                                  **sl.shortlist_recall(short, dataset.txt2img)}
    return out


def summarize(sets: list[dict], labels: list[str]) -> list[dict[str, Any]]:
    """One row per setting over all sets: mean AR, the worst set's change against exhaustive, pair ratio."""
    rows = []
    for label in labels:
        per = [(s, s["settings"][label]) for s in sets]
        deltas = [(r["rerank_ar"] - s["exhaustive_ar"], s["lang"]) for s, r in per]
        worst = min(deltas)
        scored, total = sum(r["pairs_scored"] for _, r in per), sum(r["pairs_total"] for _, r in per)
        ks = sorted({f"{r['k_img']}/{r['k_txt']}" for _, r in per})
        rows.append({"setting": label, "k": ", ".join(ks), "rerank_ar": sum(r["rerank_ar"] for _, r in per) / len(per),
                     "worst_change": worst[0], "worst_lang": worst[1],
                     "txt_recall_at_k": sum(r["txt_recall_at_k"] for _, r in per) / len(per),
                     "img_recall_at_k": sum(r["img_recall_at_k"] for _, r in per) / len(per),
                     "pairs_scored": scored, "pairs_total": total, "pair_ratio": total / max(scored, 1)})
    return rows


def markdown(sets: list[dict], rows: list[dict]) -> str:
    exhaustive = sum(s["exhaustive_ar"] for s in sets) / len(sets)
    dual = sum(s["dual_ar"] for s in sets) / len(sets)
    lines = [f"Sets: {', '.join(s['name'] for s in sets)}. Mean AR: exhaustive {exhaustive:.1f}, "
             f"dual encoder alone {dual:.1f}.", "",
             "| setting | k_img/k_txt | mean AR (rerank) | worst change vs exhaustive | recall@k t->i / i->t "
             "| pairs scored | fewer pairs |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['k']} | {r['rerank_ar']:.1f} | {r['worst_change']:+.2f} "
                     f"({r['worst_lang']}) | {r['txt_recall_at_k']:.1f} / {r['img_recall_at_k']:.1f} | "
                     f"{r['pairs_scored']:,} of {r['pairs_total']:,} | {r['pair_ratio']:.1f}x |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    import torch
    from tqdm import tqdm

    from tasks.retrieval import check_eval_dbs, load_eval_model
    from utils.atomic import atomic_write_json

    args = parse_args(argv)
    settings = settings_to_sweep(args)
    cfg = eval_config(args)
    model, head = load_eval_model(cfg)
    check_eval_dbs(cfg, model.config, cfg.test_datasets)
    with torch.no_grad():
        sets = [measure_set(model, head, spec, cfg, settings) for spec in tqdm(cfg.test_datasets, desc="sets")]
    rows = summarize(sets, [label for label, _ in settings])
    print(markdown(sets, rows), flush=True)
    if args.out:
        atomic_write_json({"checkpoint": cfg.checkpoint, "split": args.split, "sets": sets, "rows": rows}, args.out)
    return rows


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
