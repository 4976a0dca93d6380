#!/usr/bin/env python
"""Build the generated multilingual demo corpus: raw files, then databases through the real preprocessing.

    python scripts/make_demo_data.py --out DIR [--seed 42 --n_train 1000 --n_val 100 --n_test 100 --force]

Output (built in ``DIR.tmp-<pid>`` and renamed at the end, so a failure leaves nothing half-written)::

    DIR/raw/          npz/demo_imgs/*.npz, captions_{split}.jsonl, paired_{split}_en-{x}.jsonl + .align,
                      vqa_{split}_{lang}.jsonl, scenes_{split}.jsonl, labels/ (MRTM label files)
    DIR/tokenizer/    SentencePiece Unigram tokenizer in XLM-R id layout, trained on the demo text
    DIR/img_db/demo_imgs/   feat_th{conf_th}_max{max_bb}_min{min_bb} + nbb json (scripts/convert_imgdir.py)
    DIR/txt_db/       cap_{lang}_{split}.db, paired_en-{x}_{split}.db, vqa_{lang}_{split}.db (data/prepro.py)
    DIR/stats.json    counts per split and language, regions per image, tokenizer size, VQA answer stats

The default box rule keeps ``max(3, count(conf > 0.2))`` boxes (at most 100): demo images have 3-9 regions,
so UC2's usual ``min_bb`` 10 would keep every box and the rule would never be exercised.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from data.demo import lexicon as lx
from data.demo.raw import IMG_SET, SPLITS, WORD_DELIMITER, DemoConfig, corpus_texts, write_raw
from data.demo.stats import format_stats, summarize_counts, vqa_answer_stats
from utils.atomic import atomic_write_text, temp_dir_for
from utils.errors import DataError

DEFAULT_VOCAB_SIZE = 1000  # SentencePiece soft limit; with word boundaries marked the demo text gives ~430
DEFAULT_BOX_RULE = {"conf_th": 0.2, "max_bb": 100, "min_bb": 3}


def _check_target(out: Path, force: bool) -> None:
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"demo output {out} already exists and is not empty (pass --force to replace it)")


def _publish(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` with renames only (the old corpus is removed after the swap)."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is None:
        return
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()


def _close_lmdbs(root: Path) -> None:
    """Drop this process's cached LMDB handles under ``root`` before it is renamed."""
    from data.lmdb_env import close_lmdb

    for mdb in root.rglob("data.mdb"):
        close_lmdb(mdb.parent)


def _build_images(root: Path, rule: dict, progress: bool) -> dict:
    from scripts.convert_imgdir import convert_imgdir

    summary = convert_imgdir(root / "raw" / "npz" / IMG_SET, root / "img_db" / IMG_SET, progress=progress, **rule)
    if summary["dropped"]:
        raise DataError(f"convert_imgdir dropped demo images: {summary['dropped']}")
    return summary


def _build_captions(raw: Path, txt: Path, tok, img_db: Path, progress: bool) -> None:
    """``build_caption_dbs`` writes ``{split}_{lang}.db``; the demo names them ``cap_{lang}_{split}.db``."""
    from data.prepro import build_caption_dbs

    for split in SPLITS:
        staging = txt / f".captions_{split}"
        summary = build_caption_dbs(raw / f"captions_{split}.jsonl", staging, tok, split, img_db=img_db,
                                    progress=progress)
        for lang, path in summary["outputs"].items():
            Path(path).rename(txt / f"cap_{lang}_{split}.db")
        staging.rmdir()


def _build_paired_and_vqa(raw: Path, txt: Path, tok, img_db: Path, progress: bool) -> None:
    from data.prepro import build_paired_db, build_vqa_db

    for split in SPLITS:
        for x in lx.PAIR_LANGS:
            jsonl = raw / f"paired_{split}_en-{x}.jsonl"
            build_paired_db(jsonl, jsonl.with_suffix(".align"), txt / f"paired_en-{x}_{split}.db", tok,
                            img_db=img_db, progress=progress)
    for lang in lx.VQA_LANGS:
        train_db = txt / f"vqa_{lang}_train.db"
        for split in SPLITS:  # train first: val/test use its answer vocabulary
            vocab = None if split == "train" else train_db / "ans2label.json"
            build_vqa_db(raw / f"vqa_{split}_{lang}.jsonl", txt / f"vqa_{lang}_{split}.db", tok, ans2label=vocab,
                         img_db=img_db, progress=progress)


def _read_back(root: Path, rule: dict) -> tuple[dict, list[int], int]:
    """Per txt_db: examples and token lengths; boxes kept per image; tokenizer size, all via our readers."""
    from data.img_db import ImgDb
    from data.tokenizer import load_tokenizer
    from data.txt_db import TxtDb

    dbs = {}
    for db_dir in sorted((root / "txt_db").glob("*.db")):
        db = TxtDb(db_dir)
        lens = summarize_counts(db.lens)
        dbs[db_dir.name] = {"examples": len(db), "tokens_mean": lens["mean"], "tokens_max": lens["max"]}
    img_db = ImgDb(root / "img_db" / IMG_SET, **rule)
    kept = [img_db.name2nbb[name] for name in img_db.names]
    return dbs, kept, load_tokenizer(root / "tokenizer").vocab_size


def _fix_meta_paths(txt: Path, tmp_root: Path, out: Path) -> None:
    """meta.json records the tokenizer folder by absolute path: point it at the published corpus."""
    for meta_path in txt.glob("*.db/meta.json"):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tok_path = str(meta.get("tokenizer", ""))
        if tok_path.startswith(str(tmp_root)):
            meta["tokenizer"] = str(out) + tok_path[len(str(tmp_root)):]
            atomic_write_text(meta_path, json.dumps(meta, ensure_ascii=False, indent=1))


def _by_key(per_split: dict) -> dict:
    """{split: {key: n}} -> {key: {split: n}} (tables read per language, then split)."""
    return {key: {split: per_split[split][key] for split in SPLITS} for key in per_split[SPLITS[0]]}


def _collect_stats(root: Path, out: Path, cfg: DemoConfig, raw_stats: dict, rule: dict, vocab_size: int) -> dict:
    """The stats.json content; paths inside are relative to the corpus folder (except ``out_dir``)."""
    dbs, kept, n_ids = _read_back(root, rule)
    img_dir = root / "img_db" / IMG_SET
    sub_db = next(p.name for p in img_dir.iterdir() if (p / "data.mdb").is_file())
    return {
        "out_dir": str(out),
        "config": {**vars(cfg), "vocab_size": vocab_size, **rule},
        "images": raw_stats["images"],
        "captions": _by_key(raw_stats["captions"]),
        "paired": _by_key(raw_stats["paired"]),
        "vqa": _by_key(raw_stats["vqa"]),
        "vqa_types": raw_stats["vqa_types"],
        "vqa_answers": {lang: vqa_answer_stats(root / "raw", lang) for lang in lx.VQA_LANGS},
        "regions": {"raw": summarize_counts(raw_stats["regions"]), "kept": summarize_counts(kept)},
        "feat_dim": cfg.feat_dim, "num_classes": len(lx.CLASS_KEYS), "langs": list(lx.LANGS),
        "tokenizer": {"dir": "tokenizer", "vocab_size": n_ids},
        "img_db": {"dir": f"img_db/{IMG_SET}", "sub_db": sub_db, **rule},
        "labels": "raw/labels",
        "txt_dbs": dbs,
    }


def build_demo_corpus(out_dir: str | os.PathLike, seed: int = 42, n_train: int = 1000, n_val: int = 100,
                      n_test: int = 100, *, captions_per_image: int = 4, paired_per_image: int = 1,
                      questions_per_image: int = 4, vocab_size: int = DEFAULT_VOCAB_SIZE,
                      conf_th: float = DEFAULT_BOX_RULE["conf_th"], max_bb: int = DEFAULT_BOX_RULE["max_bb"],
                      min_bb: int = DEFAULT_BOX_RULE["min_bb"], force: bool = False, progress: bool = True) -> dict:
    """Generate the demo corpus into ``out_dir`` and return its statistics (also written to stats.json).

    Raises:
        DataError: ``out_dir`` exists and is not empty (without ``force``), or a preprocessing step failed.
    """
    from data.tokenizer import train_sentencepiece_tokenizer

    cfg = DemoConfig(seed=seed, n_train=n_train, n_val=n_val, n_test=n_test, captions_per_image=captions_per_image,
                     paired_per_image=paired_per_image, questions_per_image=questions_per_image)
    rule = {"conf_th": conf_th, "max_bb": max_bb, "min_bb": min_bb}
    out = Path(out_dir).expanduser().resolve()
    _check_target(out, force)
    tmp = temp_dir_for(out)
    tmp.mkdir(parents=True)
    try:
        raw_stats = write_raw(tmp / "raw", cfg, progress)
        tok = train_sentencepiece_tokenizer(corpus_texts(tmp / "raw"), tmp / "tokenizer", vocab_size, seed=seed,
                                            word_delimiter=WORD_DELIMITER)
        img_db = Path(_build_images(tmp, rule, progress)["db_dir"]).parent
        (tmp / "txt_db").mkdir()
        _build_captions(tmp / "raw", tmp / "txt_db", tok, img_db, progress)
        _build_paired_and_vqa(tmp / "raw", tmp / "txt_db", tok, img_db, progress)
        stats = _collect_stats(tmp, out, cfg, raw_stats, rule, vocab_size)
        _fix_meta_paths(tmp / "txt_db", tmp, out)
        (tmp / "stats.json").write_text(json.dumps(stats, ensure_ascii=False, indent=1), encoding="utf-8")
        _close_lmdbs(tmp)
        _publish(tmp, out)
    finally:
        if tmp.exists():
            _close_lmdbs(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
    return stats


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder of the corpus")
    parser.add_argument("--seed", type=int, default=42, help="seed of everything generated")
    parser.add_argument("--n_train", type=int, default=1000, help="training images")
    parser.add_argument("--n_val", type=int, default=100, help="validation images")
    parser.add_argument("--n_test", type=int, default=100, help="test images")
    parser.add_argument("--captions_per_image", type=int, default=4, help="captions per image and language")
    parser.add_argument("--paired_per_image", type=int, default=1, help="English-X pairs per image and language")
    parser.add_argument("--questions_per_image", type=int, default=4, help="VQA questions per image (en and ja)")
    parser.add_argument("--vocab_size", type=int, default=DEFAULT_VOCAB_SIZE, help="tokenizer size (soft limit)")
    parser.add_argument("--conf_th", type=float, default=DEFAULT_BOX_RULE["conf_th"], help="box confidence rule")
    parser.add_argument("--max_bb", type=int, default=DEFAULT_BOX_RULE["max_bb"], help="at most this many boxes")
    parser.add_argument("--min_bb", type=int, default=DEFAULT_BOX_RULE["min_bb"], help="at least this many boxes")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("out", "quiet")}
    try:
        stats = build_demo_corpus(args.out, progress=not args.quiet, **options)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_stats(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
