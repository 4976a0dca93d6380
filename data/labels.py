"""Detector class words per language, tokenised once, for MRTM targets (and early adaptation).

Files: ``{label_dir}/objects_vocab_{lang}.txt`` holds classes 1..C-1 (one name per line, no background,
like Visual Genome's ``objects_vocab.txt``; a line "a,b" lists alternatives and the first is used).
The background word (class 0) comes from ``{label_dir}/background.json`` ``{lang: word}`` when present,
else from :data:`BACKGROUND_WORDS`.

:meth:`LabelVocab.load` tokenises every class word once per language into a padded table (C, K), so
drawing one sub-token per masked region is an array lookup: no per-example file read and no dense
vocabulary-sized matrix (the original built a 3.2 GB one at import time).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.errors import DataError

BACKGROUND_WORDS = {
    "en": "background",
    "de": "Hintergrund",
    "fr": "arrière-plan",
    "cs": "pozadí",
    "ja": "背景",
    "zh": "背景",
}


def read_class_names(path: Path, num_classes: int) -> list[str]:
    """Names of classes 1..C-1 from one vocabulary file; the first of comma-separated alternatives."""
    if not path.is_file():
        raise DataError(f"{path}: label file not found (expected objects_vocab_<lang>.txt with "
                        f"{num_classes - 1} class names, one per line)")
    lines = path.read_text(encoding="utf-8").splitlines()
    # A trailing empty line is common in hand-edited files; interior empty lines are mistakes.
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != num_classes - 1:
        raise DataError(f"{path}: {len(lines)} class names, expected {num_classes - 1} "
                        f"(classes 1..{num_classes - 1}; background is not listed)")
    names = []
    for lineno, line in enumerate(lines, start=1):
        name = line.split(",")[0].strip()
        if not name:
            raise DataError(f"{path}, line {lineno}: empty class name")
        names.append(name)
    return names


def background_word(label_dir: Path, lang: str) -> str:
    """Background word for ``lang`` from ``background.json`` or the built-in table."""
    path = label_dir / "background.json"
    if path.is_file():
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: invalid JSON ({err})") from err
        if not isinstance(table, dict):
            raise DataError(f"{path}: expected a JSON object {{lang: word}}")
        if lang in table:
            return str(table[lang])
    if lang not in BACKGROUND_WORDS:
        raise DataError(f"{path}: no background word for language '{lang}' and none built in "
                        f"(built in: {sorted(BACKGROUND_WORDS)})")
    return BACKGROUND_WORDS[lang]


@dataclass(frozen=True)
class LabelVocab:
    """Per-language token table of detector class words.

    ``token_ids[lang]`` (C, K) int64, padded with -1; ``lengths[lang]`` (C,) int64 >= 1.
    """

    token_ids: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]

    @classmethod
    def load(cls, label_dir: str | Path, langs: Sequence[str], num_classes: int, tokenizer) -> "LabelVocab":
        """Read and tokenise the class words of ``langs``; ``tokenizer.encode(text)`` gives ids without specials."""
        label_dir = Path(label_dir)
        token_ids, lengths = {}, {}
        for lang in dict.fromkeys(langs):
            path = label_dir / f"objects_vocab_{lang}.txt"
            words = [background_word(label_dir, lang)] + read_class_names(path, num_classes)
            pieces = [list(tokenizer.encode(word)) for word in words]
            empty = [i for i, p in enumerate(pieces) if not p]
            if empty:
                raise DataError(f"{path}: class {empty[0]} ('{words[empty[0]]}') tokenises to nothing")
            width = max(len(p) for p in pieces)
            table = np.full((len(pieces), width), -1, dtype=np.int64)
            for i, p in enumerate(pieces):
                table[i, :len(p)] = p
            token_ids[lang] = table
            lengths[lang] = np.array([len(p) for p in pieces], dtype=np.int64)
        return cls(token_ids, lengths)

    @property
    def langs(self) -> list[str]:
        return list(self.token_ids)

    def words_tokens(self, lang: str, cls_index: int) -> list[int]:
        """All sub-token ids of class ``cls_index``'s word in ``lang``."""
        table = self._table(lang)
        return table[cls_index, :self.lengths[lang][cls_index]].tolist()

    def draw_targets(self, lang: str, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One random sub-token of each class word: (n,) int64 ids for (n,) class indices."""
        table = self._table(lang)
        classes = np.asarray(classes, dtype=np.int64)
        lengths = self.lengths[lang][classes]
        # floor(u * len) picks a uniform piece without a Python loop over regions.
        pick = np.floor(rng.random(len(classes)) * lengths).astype(np.int64)
        return table[classes, pick]

    def _table(self, lang: str) -> np.ndarray:
        if lang not in self.token_ids:
            raise DataError(f"no class words loaded for language '{lang}' (loaded: {self.langs})")
        return self.token_ids[lang]
