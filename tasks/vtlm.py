"""VTLM (visual translation language modelling; ``tlm`` in the original code).

Input ``<s> EN </s> <s> X </s>`` plus the image's (unmasked) regions; positions restart at 2 at the
second ``<s>``. Co-masking: an English word chosen with p = mask_prob masks all its sub-tokens and
those of its aligned words in X, with the same 80/10/10 decision; an English word without alignment
masks nothing in X. Mode "full" co-masks every example; "mix" (the original default) co-masks half of
them and masks the other half's two sides independently, token by token.
"""
from __future__ import annotations

import numpy as np
import torch

from utils.errors import DataError
from tasks.base import ExampleSource, ObjectiveSettings, text_example
from tasks.mlm import TokenPredictionObjective, apply_actions, draw_actions, mask_tokens
from tasks.registry import register_task
from utils.errors import ConfigError

MASK_MODES = ("full", "mix")
CO_MASK_SHARE = 0.5  # "mix" mode: share of co-masked examples


def _word_positions(word2ids: list, n_tokens: int, field: str, txt_id: str) -> list[np.ndarray]:
    """Sub-token positions of each word, checked against the side's token count."""
    words = [np.asarray(pos, dtype=np.int64) for pos in word2ids]
    for w, pos in enumerate(words):
        if len(pos) and (pos.min() < 0 or pos.max() >= n_tokens):
            raise DataError(f"txt_db example {txt_id}: {field}[{w}] = {pos.tolist()} points outside the "
                            f"{n_tokens} tokens of that side")
    return words


def _alignment(raw: dict, n_words2: int, txt_id: str) -> dict[int, list[int]]:
    """``lang1_lang2_walign`` with int keys (msgpack may give ints or strings), targets checked."""
    align = {int(k): [int(v) for v in vs] for k, vs in raw.items()}
    for k, vs in align.items():
        if any(not 0 <= v < n_words2 for v in vs):
            raise DataError(f"txt_db example {txt_id}: lang1_lang2_walign[{k}] = {vs} refers to words outside "
                            f"0..{n_words2 - 1} of lang2")
    return align


def co_mask(ids1, ids2, words1: list[np.ndarray], words2: list[np.ndarray], align: dict[int, list[int]],
            mask_prob: float, meta: dict, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Co-mask an English/X pair.

    Args:
        ids1 (T1,), ids2 (T2,): token ids of each side (no specials); words1/words2: per word, its
        sub-token positions; align: English word -> aligned X words.
    Returns:
        masked1 (T1,), labels1 (T1,), masked2 (T2,), labels2 (T2,); labels are -1 off target.
        At least one English word is chosen.
    """
    ids1, ids2 = np.asarray(ids1, dtype=np.int64), np.asarray(ids2, dtype=np.int64)
    chosen = rng.random(len(words1)) < mask_prob
    if not chosen.any():
        chosen[rng.integers(len(words1))] = True
    actions = draw_actions(len(words1), rng)  # one decision per English word, shared with its aligned words
    act1 = np.full(len(ids1), -1, dtype=np.int64)
    act2 = np.full(len(ids2), -1, dtype=np.int64)
    for w in np.flatnonzero(chosen):
        act1[words1[w]] = actions[w]
        for v in align.get(int(w), ()):
            act2[words2[v]] = actions[w]
    out = []
    for ids, act in ((ids1, act1), (ids2, act2)):
        masked, positions = ids.copy(), np.flatnonzero(act >= 0)
        apply_actions(masked, positions, act[positions], meta, rng)
        out += [masked, np.where(act >= 0, ids, -1)]
    return tuple(out)


def paired_input(masked1: np.ndarray, masked2: np.ndarray, labels1: np.ndarray, labels2: np.ndarray,
                 meta: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``<s> EN </s> <s> X </s>`` ids and labels (T1 + T2 + 4,) and the index of the second ``<s>``."""
    cls, sep = meta["CLS"], meta["SEP"]
    ids = np.concatenate([[cls], masked1, [sep, cls], masked2, [sep]]).astype(np.int64)
    labels = np.concatenate([[-1], labels1, [-1, -1], labels2, [-1]]).astype(np.int64)
    return torch.from_numpy(ids), torch.from_numpy(labels), len(masked1) + 2


@register_task("vtlm", aliases=("tlm",))
class VtlmObjective(TokenPredictionObjective):
    """Co-masked (or, in "mix" mode, half independently masked) paired captions; CE on both sides."""

    def __init__(self, settings: ObjectiveSettings):
        if settings.vtlm_mask_mode not in MASK_MODES:
            raise ConfigError(f"vtlm_mask_mode: expected one of {MASK_MODES}, got '{settings.vtlm_mask_mode}'")
        super().__init__(settings)

    def _mask_pair(self, fields: dict, meta: dict, txt_id: str, rng: np.random.Generator):
        ids1, ids2 = fields["input_ids_lang1"], fields["input_ids_lang2"]
        if len(ids1) == 0 or len(ids2) == 0:
            raise DataError(f"txt_db example {txt_id}: a VTLM pair needs tokens on both sides")
        words1 = _word_positions(fields["word2ids_lang1"], len(ids1), "word2ids_lang1", txt_id)
        words2 = _word_positions(fields["word2ids_lang2"], len(ids2), "word2ids_lang2", txt_id)
        co = self.settings.vtlm_mask_mode == "full" or rng.random() < CO_MASK_SHARE
        if co and words1:
            align = _alignment(fields.get("lang1_lang2_walign") or {}, len(words2), txt_id)
            return co_mask(ids1, ids2, words1, words2, align, self.settings.mask_prob, meta, rng)
        masked1, labels1 = mask_tokens(ids1, self.settings.mask_prob, meta, rng)
        masked2, labels2 = mask_tokens(ids2, self.settings.mask_prob, meta, rng)
        return masked1, labels1, masked2, labels2

    def build_example(self, source: ExampleSource, index: int, rng: np.random.Generator) -> dict:
        record = source.text(index)
        masked1, labels1, masked2, labels2 = self._mask_pair(record.fields, record.meta, record.txt_id, rng)
        ids, labels, restart = paired_input(masked1, masked2, labels1, labels2, record.meta)
        example = text_example(ids, source.image(record.part, record.fields["img_fname"]), restart_at=restart)
        example["txt_labels"] = labels
        return example
