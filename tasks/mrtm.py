"""MRTM (masked region-to-token modelling; ``vmlm`` in the original code).

A masked region's target is one sub-token, drawn at random, of the caption-language word for the
region's detector top-1 class; it is predicted by the shared MLM head over the whole vocabulary.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from utils.errors import DataError
from tasks.base import RegionMaskObjective, TextRecord
from tasks.registry import register_task


@register_task("mrtm", aliases=("vmlm",))
class MrtmObjective(RegionMaskObjective):
    """Regions masked (p = mask_prob, >= 1), text unmasked; CE of ``model.cls`` on masked regions."""

    stat_keys = ("loss", "n", "correct")

    def add_example_targets(self, example: dict, record: TextRecord, rng: np.random.Generator) -> None:
        vocab = self.settings.label_vocab
        if vocab is None:
            raise DataError("MRTM needs class words: set label_dir in the run config (objects_vocab_<lang>.txt)")
        if record.lang is None:
            raise DataError(f"txt_db example {record.txt_id}: the db's meta.json has no 'lang'; MRTM needs the "
                            f"caption language to pick the class words")
        masks = example["img_masks"].numpy()
        top1 = example["soft_labels"][masks].argmax(-1).numpy()  # (n_masked,) detector classes
        example["mrtm_labels"] = torch.from_numpy(vocab.draw_targets(record.lang, top1, rng))

    def add_targets(self, batch: dict, examples: list[dict]) -> None:
        batch["mrtm_labels"] = torch.cat([ex["mrtm_labels"] for ex in examples])  # (n_masked,)

    def _logits(self, model, batch: dict) -> torch.Tensor:
        return model.cls(self.masked_hidden(model, batch)).float()  # (n_masked, V)

    def compute_loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss = F.cross_entropy(self._logits(model, batch), batch["mrtm_labels"])
        return loss, {"loss": loss.item()}

    def eval_stats(self, model, batch: dict) -> dict[str, float]:
        logits, labels = self._logits(model, batch), batch["mrtm_labels"]
        return {"loss": F.cross_entropy(logits, labels, reduction="sum").item(), "n": float(labels.numel()),
                "correct": (logits.argmax(-1) == labels).sum().item()}
