"""Build txt_dbs from raw JSON-lines files (captions, VQA, paired captions + word alignments).

Examples:
    python prepro.py captions --input coco_train.jsonl --output txt/ --split coco_train --tokenizer xlmr/
    python prepro.py vqa --input vqa_train.jsonl --output txt/vqa_train.db --tokenizer xlmr/ --num_answers 3129
    python prepro.py vqa --input vqa_val.jsonl --output txt/vqa_val.db --tokenizer xlmr/ \\
        --ans2label txt/vqa_train.db/ans2label.json
    python prepro.py paired --input cc_en_de.jsonl --align cc_en_de.align --output txt/cc_en_de.db --tokenizer xlmr/
    python prepro.py parallel --input en_de.tsv --lang2 de --output txt/en-de.db --tokenizer xlmr/ \
        [--native_tokenizer clip_folder/]      # MLA's NLT pairs from a TSV: id, English, X[, img_fname]
    python prepro.py multi30k --input multi30k-dataset/data/task1/raw --src en --tgt de --output txt/ \
        --tokenizer xlmr/ --img_db img/multi30k [--seed_preprocess]

Input formats and stored fields: see ``data/prepro.py``. Without an alignment file, ``scripts/align_words.py``
computes one. Prints a summary (examples written, dropped and why, token counts) at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data.multi30k import M30K_SPLITS, build_multi30k
from utils.errors import DataError
from data.prepro import (DEFAULT_MAX_TXT_LEN, DEFAULT_NUM_ANSWERS, build_caption_dbs, build_paired_db,
                         build_vqa_db, format_summary)
from data.tokenizer import DEFAULT_NO_SPACE_LANGS
from utils.faults import RunError, check_output_dir, handle_termination, interruption_line


def _common(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--input", required=True, type=Path, help="JSON-lines input file")
    sub.add_argument("--tokenizer", required=True, type=Path,
                     help="folder of the XLM-R tokenizer (HF layout or sentencepiece.bpe.model)")
    sub.add_argument("--img_db", type=Path, help="img_db folder; examples whose image it lacks are an error")
    sub.add_argument("--drop_unknown_images", action="store_true", help="drop (and count) those instead")
    sub.add_argument("--drop_empty", action="store_true", help="drop (and count) empty texts instead of failing")
    sub.add_argument("--max_txt_len", type=int, default=DEFAULT_MAX_TXT_LEN,
                     help="only reported: how many examples training will skip as too long")
    sub.add_argument("--overwrite", action="store_true", help="replace existing output databases")
    sub.add_argument("--no_progress", action="store_true", help="no tqdm progress bar")
    sub.add_argument("--summary_json", type=Path, help="also write the summary as JSON to this file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subs = parser.add_subparsers(dest="command", required=True)
    cap = subs.add_parser("captions", help="captions -> one txt_db per language: OUTPUT/{split}_{lang}.db")
    _common(cap)
    cap.add_argument("--output", required=True, type=Path, help="folder receiving the {split}_{lang}.db dirs")
    cap.add_argument("--split", help="name prefix of the databases (default: the input file's stem)")
    vqa = subs.add_parser("vqa", help="VQA questions -> one txt_db with soft targets and ans2label.json")
    _common(vqa)
    vqa.add_argument("--output", required=True, type=Path, help="the .db folder to write")
    vqa.add_argument("--ans2label", type=Path, help="answer vocabulary to use (default: built from this input)")
    vqa.add_argument("--num_answers", type=int, default=DEFAULT_NUM_ANSWERS,
                     help="size of the answer vocabulary built from the input (top K by frequency)")
    paired = subs.add_parser("paired", help="paired captions + Pharaoh alignments -> one VTLM txt_db")
    _common(paired)
    paired.add_argument("--align", required=True, type=Path, help="Pharaoh alignment file, one line per JSON line")
    paired.add_argument("--output", required=True, type=Path, help="the .db folder to write")
    paired.add_argument("--no_space_langs", nargs="*", default=sorted(DEFAULT_NO_SPACE_LANGS),
                        help="languages written without spaces (their words are joined without ▁)")
    par = subs.add_parser("parallel", help="English-X TSV (id, en, x[, img_fname]) -> one txt_db for MLA's NLT")
    par.add_argument("--input", required=True, type=Path, help="TSV file")
    par.add_argument("--output", required=True, type=Path, help="the .db folder to write")
    par.add_argument("--tokenizer", required=True, type=Path, help="the non-native (multilingual) tokenizer")
    par.add_argument("--lang2", required=True, help="language of the third column")
    par.add_argument("--lang1", default="en", help="the native language (second column)")
    par.add_argument("--native_tokenizer", type=Path,
                     help="local HF tokenizer folder of the native model (e.g. CLIP's BPE) for the English side")
    par.add_argument("--overwrite", action="store_true", help="replace an existing output database")
    par.add_argument("--summary_json", type=Path, help="also write the summary as JSON to this file")
    _multi30k_parser(subs)
    return parser


def _native_tokenizer(folder: Path | None):
    """``text -> ids`` with the native model's specials, from a local HF tokenizer folder (offline)."""
    if folder is None:
        return None
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return lambda text: hf(text, truncation=True, max_length=hf.model_max_length)["input_ids"]


def _multi30k_parser(subs) -> None:
    m30k = subs.add_parser("multi30k", help="Multi30K text + image splits -> parallel txt_dbs, one per split "
                                            "(OUTPUT/multi30k_{src}-{tgt}_{split}.db)")
    _common(m30k)
    m30k.add_argument("--output", required=True, type=Path, help="folder receiving the .db dirs")
    m30k.add_argument("--src", required=True, help="source language (file suffix), e.g. en")
    m30k.add_argument("--tgt", required=True, help="target language (file suffix), e.g. de or fr")
    m30k.add_argument("--splits", nargs="+", default=list(M30K_SPLITS), help="split names (file stems)")
    m30k.add_argument("--image_splits", type=Path, help="folder of {split}.txt image lists (default INPUT/image_splits)")
    m30k.add_argument("--max_len", type=int, default=100, help="train: drop pairs with more tokens on a side")
    m30k.add_argument("--seed_preprocess", action="store_true",
                      help="the VTLM seed's text pipeline (Moses punctuation normalisation and tokenisation, "
                           "lowercase, accents stripped) before tokenising, for comparable BLEU")


def run(args: argparse.Namespace) -> dict:
    """Dispatch to the library builder chosen by ``args.command``; returns its summary."""
    check_output_dir(args.output, "--output")  # a file there, or no write access: say so before tokenizing
    if args.command == "parallel":
        from data.mla_prepro import build_parallel_db_from_tsv
        return build_parallel_db_from_tsv(args.input, args.output, args.tokenizer, args.lang2, args.lang1,
                                          _native_tokenizer(args.native_tokenizer), args.overwrite)
    common = dict(img_db=args.img_db, drop_unknown_images=args.drop_unknown_images, drop_empty=args.drop_empty,
                  max_txt_len=args.max_txt_len, overwrite=args.overwrite, progress=not args.no_progress)
    if args.command == "captions":
        return build_caption_dbs(args.input, args.output, args.tokenizer, args.split or args.input.stem, **common)
    if args.command == "vqa":
        return build_vqa_db(args.input, args.output, args.tokenizer, ans2label=args.ans2label,
                            top_k=args.num_answers, **common)
    if args.command == "multi30k":
        return build_multi30k(args.input, args.output, args.tokenizer, args.src, args.tgt, splits=args.splits,
                              image_splits=args.image_splits, img_db=args.img_db,
                              drop_unknown_images=args.drop_unknown_images, max_len=args.max_len,
                              preprocess=args.seed_preprocess, overwrite=args.overwrite)
    return build_paired_db(args.input, args.align, args.output, args.tokenizer,
                           no_space_langs=args.no_space_langs, **common)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except (DataError, RunError) as err:  # RunError: a full disk, named by its path
        print(f"prepro.py {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # the writers removed their build folders on the way out
        print(f"prepro.py {args.command}: {interruption_line(exc)}", file=sys.stderr)
        return 130
    print(format_summary(summary) if args.command != "multi30k" else json.dumps(summary, indent=2))
    if args.summary_json is not None:
        args.summary_json.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    handle_termination()
    sys.exit(main())
