"""Read training text for the tokenizer and the XLM-R stand-in from a user's own files.

A file is JSON lines (``.jsonl``/``.json``: the named fields of every object; a field may hold a string or
a list of strings, e.g. VQA ``answers``) or plain text (any other suffix: one text per non-empty line).
Errors name the file and line.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from utils.errors import DataError

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


def _json_texts(path: Path, fields: Sequence[str]) -> Iterator[str]:
    from data.prepro import iter_jsonl  # the one JSONL reader: per-line UTF-8 and JSON errors named

    for lineno, row in iter_jsonl(path, ()):
        if not any(f in row for f in fields):
            raise DataError(f"{path}, line {lineno}: expected a JSON object with a field among {list(fields)} "
                            f"(found {sorted(row)})")
        for field in fields:
            value = row.get(field)
            for text in value if isinstance(value, list) else [value]:
                if isinstance(text, str) and text.strip():
                    yield text.strip()


def read_texts(paths: Sequence[str | Path], fields: Sequence[str] = ("caption",)) -> list[str]:
    """Every non-empty text of ``paths`` (JSONL: the ``fields`` of each object; else one per line)."""
    texts: list[str] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"{path}: text file not found")
        try:
            if path.suffix.lower() in JSON_SUFFIXES:
                texts.extend(_json_texts(path, fields))
            else:
                texts.extend(t.strip() for t in path.read_text(encoding="utf-8").splitlines() if t.strip())
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not texts:
        raise DataError(f"{[str(p) for p in paths]}: no text found (JSON fields {list(fields)})")
    return texts
