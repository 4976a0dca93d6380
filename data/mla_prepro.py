"""Parallel English-X text for MLA's NLT from a plain TSV, into the same txt_db layout as prepro.py's paired dbs.

TSV: one pair per line, ``id<TAB>english<TAB>x`` or ``id<TAB>english<TAB>x<TAB>img_fname``; blank lines are
skipped. Stored per pair: ``input_ids_lang1`` / ``input_ids_lang2`` (no specials; ``data.mla_data`` wraps them
with the db's ``<s>``/``</s>``), ``lang1``/``lang2``, ``img_fname`` (None without the column; NLT ignores the
image) and ``input_ids`` = the X side (its length is what ``id2len`` reports).

With a real CLIP the English side needs CLIP's own tokenizer: ``native_tokenizer`` (a callable
``text -> ids`` WITH its start/end tokens, e.g. a local Hugging Face ``CLIPTokenizer``) is stored as
``native_ids`` and used by NLT instead of the wrapped ``input_ids_lang1``.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from utils.errors import DataError
from data.prepro import DEFAULT_MAX_TXT_LEN, _as_tokenizer, _check_written, _Stats, make_meta
from data.txt_db import TxtDbWriter


def _tsv_rows(path: Path):
    """``(lineno, fields)`` of the non-blank lines; each must have 3 or 4 tab-separated fields."""
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) not in (3, 4) or not all(f.strip() for f in fields[:3]):
                raise DataError(f"{path}, line {lineno}: expected 'id<TAB>english<TAB>x[<TAB>img_fname]' "
                                f"with non-empty fields, got {len(fields)} field(s)")
            yield lineno, fields


def build_parallel_db_from_tsv(tsv: str | os.PathLike, out_db: str | os.PathLike, tokenizer, lang2: str,
                               lang1: str = "en", native_tokenizer: Callable[[str], list[int]] | None = None,
                               overwrite: bool = False) -> dict:
    """Write the pairs of ``tsv`` into the txt_db ``out_db``; returns the prepro summary (X-side token counts)."""
    path, tok = Path(tsv), _as_tokenizer(tokenizer)
    seen: set[str] = set()
    stats = _Stats("parallel", DEFAULT_MAX_TXT_LEN)
    with TxtDbWriter(Path(out_db), make_meta(tok, task="parallel"), overwrite=overwrite) as writer:
        for lineno, fields in _tsv_rows(path):
            key, english, other = fields[:3]
            if key in seen:
                raise DataError(f"{path}, line {lineno}: id {key!r} appears twice")
            seen.add(key)
            ids2 = tok.encode(other)
            value = {"input_ids": ids2, "input_ids_lang1": tok.encode(english), "input_ids_lang2": ids2,
                     "lang1": lang1, "lang2": lang2, "img_fname": fields[3] if len(fields) == 4 else None}
            if native_tokenizer is not None:
                value["native_ids"] = list(native_tokenizer(english))
            writer.add(key, value)
            stats.add(len(ids2))
        _check_written(stats, path)  # inside the writer: an empty db is never published
    return stats.summary({"tsv": str(path)}, {"parallel": str(out_db)})
