#!/usr/bin/env python
"""Train a SentencePiece tokenizer in XLM-R's layout, for users without the XLM-R files.

    python scripts/train_tokenizer.py --input captions.jsonl [more files] --field caption \
        --size 8000 --out /pretrain/my_tokenizer [--word_delimiter ' ']

Input: JSON-lines files (the ``--field`` values of every line; a list value, e.g. VQA ``answers``, gives
each of its strings) or plain text files (one text a line). Output: a folder with
``sentencepiece.bpe.model`` and the Hugging Face tokenizer files, ids in XLM-R's layout (``<s>`` 0, ``<pad>``
1, ``</s>`` 2, ``<unk>`` 3, ``<mask>`` last), which ``prepro.py --tokenizer`` and ``make_tiny_xlmr.py``
read. ``--size`` is SentencePiece's size (the vocabulary has two more ids); it is a soft limit, and a
vocabulary far below it (a small corpus) is reported, since the model's ``vocab_size`` must then be the
size actually reached.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

if __name__ == "__main__":  # run as a script from any cwd: make the repository's packages importable
    _ROOT = str(Path(__file__).resolve().parents[1])
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)

#: Below this fraction of the size asked, the result is reported as "far below".
SHORTFALL = 0.8


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input", type=Path, nargs="+", required=True, help="JSONL or plain text files")
    p.add_argument("--field", nargs="+", default=["caption"], help="JSON field(s) holding the text")
    p.add_argument("--size", type=int, required=True, help="SentencePiece vocabulary size asked for")
    p.add_argument("--out", type=Path, required=True, help="output folder (XLM-R tokenizer layout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return p.parse_args(argv)


def shortfall_note(asked: int, pieces: int) -> str | None:
    """A warning when the trained vocabulary came out far below the size asked for, else None."""
    if pieces >= SHORTFALL * asked:
        return None
    return (f"warning: the vocabulary has {pieces} pieces, far below the {asked} asked for: the text is too "
            f"small for that size. Use vocab_size {pieces + 2} in the model config (the tokenizer's size, "
            f"<pad> and <mask> included), or give more text")


def main(argv: Sequence[str] | None = None) -> int:
    from utils.errors import DataError
    from data.text_input import read_texts
    from data.tokenizer import load_tokenizer, train_sentencepiece_tokenizer

    args = parse_args(argv)
    try:
        if args.size < 8:
            raise DataError(f"--size {args.size}: expected at least 8 pieces")
        texts = read_texts(args.input, args.field)
        out = train_sentencepiece_tokenizer(texts, args.out, args.size, seed=args.seed, overwrite=args.overwrite)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    tok = load_tokenizer(out)
    print(f"trained on {len(texts)} texts: {tok.vocab_size} ids (<mask> = {tok.mask_id}) -> {out}")
    note = shortfall_note(args.size, tok.vocab_size - 2)
    if note:
        print(note, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
