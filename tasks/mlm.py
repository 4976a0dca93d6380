"""MLM: masked language modelling on captions conditioned on the (unmasked) image."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from data.collate import collate_backbone, pad_labels
from utils.errors import DataError
from tasks.base import ExampleSource, Objective, run_backbone, text_example, wrap_text
from tasks.registry import register_task

# Of the chosen tokens: below 0.8 -> <mask>, below 0.9 -> random id, else unchanged (BERT's 80/10/10).
MASK_SHARE = 0.8
RANDOM_SHARE = 0.1

ACTION_MASK, ACTION_RANDOM, ACTION_KEEP = 0, 1, 2


def draw_actions(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) int: ACTION_MASK / ACTION_RANDOM / ACTION_KEEP with probabilities 0.8 / 0.1 / 0.1."""
    u = rng.random(n)
    return np.where(u < MASK_SHARE, ACTION_MASK, np.where(u < MASK_SHARE + RANDOM_SHARE, ACTION_RANDOM, ACTION_KEEP))


def apply_actions(ids: np.ndarray, positions: np.ndarray, actions: np.ndarray, meta: dict,
                  rng: np.random.Generator) -> None:
    """Replace ``ids[positions]`` in place: <mask>, a random id from ``meta['v_range']``, or keep.

    ``positions`` (k,) and ``actions`` (k,) align; random ids are drawn with one vectorised call.
    """
    low, high = meta["v_range"]
    ids[positions[actions == ACTION_MASK]] = meta["MASK"]
    rand_pos = positions[actions == ACTION_RANDOM]
    ids[rand_pos] = rng.integers(low, high, size=len(rand_pos))


def mask_tokens(ids, mask_prob: float, meta: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking of one token sequence (no specials).

    Args:
        ids: (T,) token ids, T >= 1.
    Returns:
        masked (T,) int64 ids and labels (T,) int64: the original id where a target, else -1.
        At least one token is a target.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) == 0:
        raise ValueError("cannot mask an empty token sequence")
    chosen = rng.random(len(ids)) < mask_prob
    if not chosen.any():
        chosen[rng.integers(len(ids))] = True
    positions = np.flatnonzero(chosen)
    masked = ids.copy()
    apply_actions(masked, positions, draw_actions(len(positions), rng), meta, rng)
    labels = np.where(chosen, ids, -1)
    return masked, labels


def wrapped_labels(labels: np.ndarray) -> torch.Tensor:
    """Labels (T,) -> (T + 2,) long with -1 at ``<s>`` and ``</s>``."""
    return torch.from_numpy(np.concatenate([[-1], labels, [-1]]).astype(np.int64))


def token_prediction(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """MLM-head logits (n, V) at the text targets and their labels (n,).

    Text of example i sits at packed positions 0..len_i - 1, so the first Lt hidden states line up with
    ``txt_labels`` (B, Lt); padded text slots have label -1 and are dropped.
    """
    hidden = run_backbone(model, batch)  # (B, L, H)
    labels = batch["txt_labels"]  # (B, Lt)
    targets = labels != -1
    logits = model.cls(hidden[:, :labels.size(1)][targets])  # (n, V)
    return logits, labels[targets]


def token_loss_and_stats(model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    logits, labels = token_prediction(model, batch)
    loss = F.cross_entropy(logits.float(), labels)
    return loss, {"loss": loss.item(), "n_targets": float(labels.numel())}


def token_eval_stats(model, batch: dict) -> dict[str, float]:
    logits, labels = token_prediction(model, batch)
    loss = F.cross_entropy(logits.float(), labels, reduction="sum")
    correct = (logits.argmax(-1) == labels).sum()
    return {"loss": loss.item(), "n": float(labels.numel()), "correct": correct.item()}


class TokenPredictionObjective(Objective):
    """Shared by MLM and VTLM: examples carry ``txt_labels`` (-1 = not a target); the shared MLM head
    predicts the masked tokens; cross-entropy and accuracy over the targets."""

    stat_keys = ("loss", "n", "correct")

    def collate(self, examples: list[dict]) -> dict:
        batch = collate_backbone(examples)
        batch["txt_labels"] = pad_labels([ex["txt_labels"] for ex in examples])  # (B, Lt)
        return batch

    def compute_loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        return token_loss_and_stats(model, batch)

    def eval_stats(self, model, batch: dict) -> dict[str, float]:
        return token_eval_stats(model, batch)


@register_task("mlm")
class MlmObjective(TokenPredictionObjective):
    """Tokens masked with p = mask_prob (80/10/10, at least one); images unmasked; CE on the targets."""

    def build_example(self, source: ExampleSource, index: int, rng: np.random.Generator) -> dict:
        record = source.text(index)
        if len(record.fields["input_ids"]) == 0:
            raise DataError(f"txt_db example {record.txt_id}: empty input_ids, MLM needs at least one token")
        masked, labels = mask_tokens(record.fields["input_ids"], self.settings.mask_prob, record.meta, rng)
        example = text_example(wrap_text(masked.tolist(), record.meta),
                               source.image(record.part, record.fields["img_fname"]))
        example["txt_labels"] = wrapped_labels(labels)
        return example
