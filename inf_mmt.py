#!/usr/bin/env python
"""Translate the test sets of a trained MMT/NMT run, score them, and run the probes.

    python inf_mmt.py --run RUN_DIR [--checkpoint RUN_DIR/ckpt/model_best.pt] [--out results.json]
        [--shuffles 5] [--lexicon lexicon.json] [--no_meteor] [--key value ...]

The run's ``hps.json`` gives the data, languages, model and degradation; ``--key value`` overrides any of
it (e.g. ``--degrade.mode words --degrade.words_file nouns.txt`` for a test-time-only degradation,
``--test_dbs.test2017 DB``). For each test set (``test_dbs``, else ``val_db``) it writes the hypotheses
(``RUN_DIR/hyp.{name}.txt``, in the data's order) and reports ``bleu_tok`` (the seed's definition),
``bleu_detok`` (sacreBLEU 13a, signature), chrF and METEOR where its jar runs; with ``--lexicon`` (JSON
{source word: [its translations]}) the accuracy of masked source words in the output; with
``--shuffles N`` the incongruent-image probe (BLEU with N random image permutations, Δ).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path


def parse(argv: Sequence[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="run directory of train_mmt.py")
    parser.add_argument("--checkpoint", type=Path, help="model file (default RUN/ckpt/model_best.pt)")
    parser.add_argument("--out", type=Path, help="results JSON (default RUN/results.json)")
    parser.add_argument("--shuffles", type=int, default=0, help="incongruent-image probe: number of permutations")
    parser.add_argument("--lexicon", type=Path, help="JSON {source word: [translations]} for masked-word accuracy")
    parser.add_argument("--no_meteor", action="store_true", help="skip METEOR even where its jar runs")
    return parser.parse_known_args(argv)


def load_run_config(run: Path, overrides: Sequence[str]):
    """The run's MmtConfig with ``--key value`` overrides (resume off: inference never trains)."""
    from utils.config import ConfigError, parse_args_and_config
    from training.mmt_config import MmtConfig

    hps = run / "hps.json"
    if not hps.is_file():
        raise ConfigError(f"{hps}: not found; --run must name a train_mmt.py run directory")
    return parse_args_and_config(MmtConfig, ["--config", str(hps), *overrides, "--resume", "none"])


def evaluate(cfg, model, tokenizer, img_db, args) -> dict:
    """Scores (and probes) of every test set of ``cfg``."""
    from evaluation.mmt_eval import image_awareness, permutations, split_scores
    from tasks.translation_setup import build_translation_task, translation_spec, with_spec
    from utils.mt_metrics import bleu_tok, tok_form

    lexicon = json.loads(args.lexicon.read_text(encoding="utf-8")) if args.lexicon else None
    results = {}
    for name, db in (cfg.test_dbs or {"val": cfg.val_db}).items():
        split = build_translation_task(cfg, tokenizer, img_db, eval_db=db, with_train=False)
        out = split.translate(model)
        (args.run / f"hyp.{name}.txt").write_text("\n".join(out["hyps"]) + "\n", encoding="utf-8")
        results[name] = split_scores(out, cfg.tgt_lang, not args.no_meteor, lexicon)
        if args.shuffles:
            refs = tok_form(out["refs"], cfg.tgt_lang)
            shuffled = []
            for perm in permutations(len(split.val_data.source), args.shuffles, cfg.seed):
                probe = with_spec(split, translation_spec(cfg, image_of=perm)).translate(model)
                shuffled.append(bleu_tok(tok_form(probe["hyps"], cfg.tgt_lang), refs).score)
            results[name]["incongruent"] = image_awareness(results[name]["bleu_tok"]["score"], shuffled)
    return results


def main(argv: Sequence[str] | None = None) -> dict:
    from data.img_db import ImgDb
    from data.tokenizer import load_tokenizer
    from model.seq2seq import load_seq2seq_state
    from utils.atomic import atomic_write_json
    from tasks.translation_setup import build_translation_model

    args, overrides = parse(argv)
    cfg = load_run_config(args.run, overrides)
    tokenizer = load_tokenizer(cfg.tokenizer)
    img_db = ImgDb(cfg.img_db, cfg.conf_th, cfg.max_bb, cfg.min_bb, cfg.num_bb)
    cfg.init = "random"  # the weights come from the run's checkpoint
    model, _ = build_translation_model(cfg, tokenizer, img_db)
    load_seq2seq_state(model, args.checkpoint or args.run / "ckpt" / "model_best.pt")
    results = evaluate(cfg, model, tokenizer, img_db, args)
    atomic_write_json(results, args.out or args.run / "results.json")
    for name, scores in results.items():
        line = " ".join(f"{k}={v['score']:.2f}" for k, v in scores.items() if isinstance(v, dict) and v.get("score") is not None)
        print(f"{name}: {line}")
    return results


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
