"""Multi30K (Task 1) as distributed -> one parallel txt_db per split, tied to an img_db.

Input folder (the multi30k-dataset layout, plain or ``.gz``)::

    DIR/{split}.{lang}              one sentence per line (train, val, test_2016_flickr, test_2017_flickr,
                                    test_2017_mscoco; any split name works)
    DIR/image_splits/{split}.txt    one image file name per line, aligned with the sentences
                                    (``--image_splits`` names another folder)

Output: ``OUT/multi30k_{src}-{tgt}_{split}.db`` per split. Each example (key = split line number, from
0) stores the fields of a VTLM pair (``data.prepro.paired_example``: ``input_ids``,
``input_ids_lang1``/``_lang2``, ``word2ids_lang1``/``_lang2``, ``lang1`` = src, ``lang2`` = tgt,
``img_fname``) plus ``raw_lang1``/``raw_lang2``, the sentences as fed to the tokenizer (the references
of BLEU). So the same database serves VTLM-C pretraining and MMT fine-tuning.

Files whose line counts differ are refused, naming the first line without a counterpart. Training
splits drop pairs longer than ``max_len`` tokens on either side; a dropped pair takes its image with it
(every example carries its own ``img_fname``), so sentence and image stay aligned (MMT_FACTS §11.14).

``seed_preprocess`` applies the seed's text pipeline (MMT_FACTS §6) before tokenisation, for
comparability with its BLEU: Moses unicode-punctuation replacement and normalisation, removal of
non-printing characters, Moses tokenisation without escaping (``sacremoses``), lowercasing and accent
stripping. Without it the text is kept as distributed (cased, untokenised).
"""
from __future__ import annotations

import gzip
import os
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from utils.errors import DataError
from utils.mt_metrics import normalise

M30K_SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr", "test_2017_mscoco")
TRAIN_SPLITS = frozenset({"train"})


@lru_cache(maxsize=None)
def _moses(lang: str):
    try:
        from sacremoses import MosesPunctNormalizer, MosesTokenizer
    except ImportError as err:  # pragma: no cover - listed in requirements.txt
        raise DataError("seed_preprocess needs the 'sacremoses' package (pip install sacremoses)") from err
    normalizer = MosesPunctNormalizer(lang, pre_replace_unicode_punct=True, post_remove_control_chars=True)
    return normalizer, MosesTokenizer(lang)


def seed_preprocess(text: str, lang: str) -> str:
    """The seed's pipeline: punctuation normalisation, Moses tokenisation (no escaping), lowercase, no accents."""
    normalizer, tokenizer = _moses(lang)
    tokens = tokenizer.tokenize(normalizer.normalize(text), escape=False, return_str=True)
    return normalise(" ".join(tokens.split()))


def _open_lines(path: Path) -> list[str]:
    """Lines of ``path`` or ``path.gz`` (newline stripped); an error names the file if neither exists."""
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            opener = gzip.open if candidate.suffix == ".gz" else open
            with opener(candidate, "rt", encoding="utf-8", newline="\n") as fh:
                return [line.rstrip("\r\n") for line in fh]
    raise DataError(f"{path}: file not found (nor {path.name}.gz); expected one line per sentence/image")


def read_split(text_dir: Path, image_dir: Path, split: str, langs: Sequence[str]
               ) -> tuple[list[list[str]], list[str]]:
    """Aligned columns of one split: per language its sentences, and the image names.

    Raises DataError naming the first line that has no counterpart when the files differ in length.
    """
    paths = [text_dir / f"{split}.{lang}" for lang in langs] + [image_dir / f"{split}.txt"]
    columns = [_open_lines(p) for p in paths]
    lengths = [len(c) for c in columns]
    if len(set(lengths)) > 1:
        short = min(range(len(paths)), key=lambda k: lengths[k])
        long = max(range(len(paths)), key=lambda k: lengths[k])
        raise DataError(f"{paths[long]}, line {lengths[short] + 1}: no counterpart in {paths[short]} "
                        f"({lengths[long]} vs {lengths[short]} lines); the files of split {split!r} must align")
    return columns[:-1], columns[-1]


def _image_key(name: str, img_names: frozenset[str] | None) -> str | None:
    """The img_db key of an image file name: the name itself or its stem; None if the db has neither."""
    if img_names is None or name in img_names:
        return name
    stem = os.path.splitext(name)[0]
    if stem in img_names:
        return stem
    return None


def _check_images(images: list[str], img_names: frozenset[str] | None, path: Path) -> None:
    for lineno, image in enumerate(images, start=1):
        if _image_key(image.strip(), img_names) is None:
            raise DataError(f"{path}, line {lineno}: image {image.strip()!r} is not in the img_db (nor its stem); "
                            f"use --drop_unknown_images to skip such lines")


def db_path(out_dir: str | os.PathLike, src: str, tgt: str, split: str) -> Path:
    return Path(out_dir) / f"multi30k_{src}-{tgt}_{split}.db"


class _Counts:
    def __init__(self):
        self.written, self.too_long, self.unknown_image, self.empty = 0, 0, 0, 0

    def as_dict(self) -> dict[str, int]:
        return {"written": self.written, "dropped_too_long": self.too_long,
                "dropped_unknown_image": self.unknown_image, "dropped_empty": self.empty}


def _example(tok, texts: tuple[str, str], langs: tuple[str, str], img_fname: str, no_space) -> dict:
    from data.prepro import paired_example

    value = paired_example(tok, texts[0], texts[1], langs[0], langs[1], {}, img_fname, no_space)
    value.update(raw_lang1=texts[0], raw_lang2=texts[1])
    return value


def _keep(value: dict, max_len: int, filter_long: bool, counts: _Counts) -> bool:
    if filter_long and max(len(value["input_ids_lang1"]), len(value["input_ids_lang2"])) > max_len:
        counts.too_long += 1
        return False
    return True


def build_split(text_dir: Path, image_dir: Path, split: str, src: str, tgt: str, out_db: Path, tok, *,
                img_names: frozenset[str] | None, max_len: int, preprocess: bool,
                no_space: Iterable[str], overwrite: bool) -> dict[str, int]:
    """Convert one split (lines whose image the img_db lacks are dropped and counted); returns its counts."""
    from data.prepro import make_meta
    from data.txt_db import TxtDbWriter

    (col_src, col_tgt), images = read_split(text_dir, image_dir, split, (src, tgt))
    counts = _Counts()
    meta = make_meta(tok, task="parallel", src=src, tgt=tgt, split=split, seed_preprocess=preprocess)
    with TxtDbWriter(out_db, meta, overwrite=overwrite) as writer:
        for lineno, (s, t, image) in enumerate(zip(col_src, col_tgt, images), start=1):
            texts = (seed_preprocess(s, src), seed_preprocess(t, tgt)) if preprocess else (s.strip(), t.strip())
            if not texts[0] or not texts[1]:
                counts.empty += 1
                continue
            key = _image_key(image.strip(), img_names)
            if key is None:
                counts.unknown_image += 1
                continue
            value = _example(tok, texts, (src, tgt), key, no_space)
            if _keep(value, max_len, split in TRAIN_SPLITS, counts):
                writer.add(str(lineno - 1), value)
                counts.written += 1
    return counts.as_dict()


def build_multi30k(text_dir: str | os.PathLike, out_dir: str | os.PathLike, tokenizer, src: str, tgt: str, *,
                   splits: Sequence[str] = M30K_SPLITS, image_splits: str | os.PathLike | None = None,
                   img_db: str | os.PathLike | None = None, drop_unknown_images: bool = False,
                   max_len: int = 100, preprocess: bool = False, overwrite: bool = False,
                   no_space_langs: Iterable[str] = ("ja", "zh")) -> dict:
    """Convert several Multi30K splits of one language pair; returns ``{split: counts}`` and the outputs.

    Every split is checked for alignment before any database is written, so a bad file leaves nothing.
    """
    from data.prepro import _as_tokenizer, load_img_names

    text_dir = Path(text_dir)
    image_dir = Path(image_splits) if image_splits else text_dir / "image_splits"
    img_names = load_img_names(img_db) if img_db is not None else None
    for split in splits:  # fail before writing anything
        _, images = read_split(text_dir, image_dir, split, (src, tgt))
        if not drop_unknown_images:
            _check_images(images, img_names, image_dir / f"{split}.txt")
    tok = _as_tokenizer(tokenizer)
    summary = {}
    for split in splits:
        out_db = db_path(out_dir, src, tgt, split)
        summary[split] = build_split(text_dir, image_dir, split, src, tgt, out_db, tok, img_names=img_names,
                                     max_len=max_len,
                                     preprocess=preprocess, no_space=frozenset(no_space_langs),
                                     overwrite=overwrite)
        summary[split]["db"] = str(out_db)
    return summary
