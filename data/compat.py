"""Start-of-run checks that every database of a run fits the model and the tokenizer.

Without them a mismatch shows up late and far from its cause: a txt_db built with a larger vocabulary
crashes mid-run with an IndexError in the embedding, a smaller one trains silently on meaningless ids, and
an img_db of another feature width fails at the first batch of that source with a shape error (the model's
``img_dim`` is taken from the first training img_db only). Each check names both sides: the database file
and the model config or tokenizer it disagrees with.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from utils.errors import DataError


def _meta_ids(meta: dict) -> dict[str, int]:
    return {k: meta[k] for k in ("CLS", "SEP", "MASK", "PAD", "UNK") if isinstance(meta.get(k), int)}


def check_txt_db_vocab(txt_db: Any, vocab_size: int, model_source: str, tokenizer: Any = None) -> None:
    """Refuse a txt_db whose ``meta.json`` does not fit a model of ``vocab_size`` ids (or ``tokenizer``).

    Checked: ``vocab_size`` (when the db records one), that every special id and ``v_range`` lie inside
    the vocabulary, and, with a tokenizer, that the special ids are the tokenizer's.
    """
    meta, meta_path = txt_db.meta, f"{txt_db.db_dir}/meta.json"
    recorded = meta.get("vocab_size")
    if isinstance(recorded, int) and recorded != vocab_size:
        raise DataError(f"{meta_path}: the db was tokenized with a vocabulary of {recorded} ids "
                        f"(tokenizer {meta.get('tokenizer') or meta.get('bert')!r}) but {model_source} has "
                        f"{vocab_size}; rebuild the db with the run's tokenizer or use the matching model")
    outside = {k: v for k, v in _meta_ids(meta).items() if not 0 <= v < vocab_size}
    v_range = meta.get("v_range")
    if isinstance(v_range, list) and len(v_range) == 2 and v_range[1] > vocab_size:
        outside["v_range[1]"] = v_range[1]
    if outside:
        raise DataError(f"{meta_path}: token ids {outside} lie outside the {vocab_size}-id vocabulary of "
                        f"{model_source}; the db was built with another tokenizer")
    if tokenizer is not None:
        want = {"CLS": tokenizer.cls_id, "SEP": tokenizer.sep_id, "MASK": tokenizer.mask_id,
                "PAD": tokenizer.pad_id, "UNK": tokenizer.unk_id}
        differ = {k: (v, want[k]) for k, v in _meta_ids(meta).items() if want[k] != v}
        if differ:
            raise DataError(f"{meta_path}: special ids differ from tokenizer {tokenizer.path} "
                            f"(db, tokenizer): {differ}; rebuild the db with this tokenizer")


def check_img_db_width(img_db: Any, img_dim: int, model_source: str) -> None:
    """Refuse an img_db whose feature width is not the model's ``img_dim``."""
    if img_db.feat_dim != img_dim:
        raise DataError(f"image db {img_db.db_dir}: features are {img_db.feat_dim}-d but {model_source} "
                        f"expects img_dim {img_dim}; every image db of a run needs the same feature width")


def check_parts(parts: Iterable[tuple[Any, Any]], model_config: Any, model_source: str,
                tokenizer: Any = None) -> None:
    """Check every ``(txt_db, img_db)`` pair against ``model_config`` (``vocab_size``, ``img_dim``)."""
    seen: set[int] = set()
    for txt, img in parts:
        if id(txt) not in seen:
            check_txt_db_vocab(txt, model_config.vocab_size, model_source, tokenizer)
            seen.add(id(txt))
        if id(img) not in seen:
            check_img_db_width(img, model_config.img_dim, model_source)
            seen.add(id(img))


def task_parts(task: Any) -> list[tuple[Any, Any]]:
    """The ``(txt_db, img_db)`` pairs a trainer task reads: its training and validation sources.

    Knows the project's task shapes (``train_data``/``val_data`` of a PretrainTask, ``source`` of the
    retrieval task); a task with none of them contributes nothing.
    """
    sources = [getattr(getattr(task, attr, None), "source", None) for attr in ("train_data", "val_data")]
    sources.append(getattr(task, "source", None))
    return [part for source in sources if source is not None for part in getattr(source, "parts", ())]
