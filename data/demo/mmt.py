"""The demo corpus in Multi30K's layout, and the lexicon the MMT probes need.

The demo's English-X pairs (``raw/paired_{split}_en-{x}.jsonl``, one per image) are written as Multi30K
ships its text (``{split}.en``, ``{split}.x``, ``image_splits/{split}.txt``; the demo test split plays
``test_2016_flickr``), so the demo's MMT stage goes through the same ``prepro.py multi30k`` a user runs.
The probes' word lists come from the lexicon: English class nouns (entities) and colour words, and for
each its translations in every inflection (masked-word accuracy).
"""
from __future__ import annotations

import json
from pathlib import Path

from data.demo.lexicon import surface_senses

SPLIT_NAMES = {"train": "train", "val": "val", "test": "test_2016_flickr"}
KINDS = ("class", "colour")


def write_multi30k_layout(raw_dir: str | Path, out_dir: str | Path, tgt: str) -> Path:
    """``out_dir`` in the Multi30K layout for en-``tgt`` from the demo's paired files; returns it."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    (out_dir / "image_splits").mkdir(parents=True, exist_ok=True)
    for split, name in SPLIT_NAMES.items():
        rows = [json.loads(line) for line in (raw_dir / f"paired_{split}_en-{tgt}.jsonl").read_text(
            encoding="utf-8").splitlines() if line.strip()]
        (out_dir / f"{name}.en").write_text("".join(r["caption1"] + "\n" for r in rows), encoding="utf-8")
        (out_dir / f"{name}.{tgt}").write_text("".join(r["caption2"] + "\n" for r in rows), encoding="utf-8")
        (out_dir / "image_splits" / f"{name}.txt").write_text("".join(r["img_fname"] + "\n" for r in rows),
                                                              encoding="utf-8")
    return out_dir


def english_words(kinds: tuple[str, ...] = KINDS) -> list[str]:
    """English surface forms whose sense is of one of ``kinds`` ("class" = entity nouns, "colour")."""
    return sorted(w for w, senses in surface_senses("en").items() if any(s.split(":")[0] in kinds for s in senses))


def translation_lexicon(tgt: str, kinds: tuple[str, ...] = KINDS) -> dict[str, list[str]]:
    """{English word of ``kinds``: every ``tgt`` form sharing one of its senses}."""
    tgt_senses = surface_senses(tgt)
    out = {}
    for word in english_words(kinds):
        senses = surface_senses("en")[word]
        out[word] = sorted(f for f, s in tgt_senses.items() if s & senses)
    return out
