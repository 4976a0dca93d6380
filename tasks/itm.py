"""ITM: image-text matching, a 2-way classification of (caption, image) pairs."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from data.collate import collate_backbone
from tasks.base import ExampleSource, Objective, run_backbone, text_example, wrap_text
from tasks.registry import register_task


def itm_logits(model, batch: dict) -> torch.Tensor:
    """(B, 2) logits from the pooled output (hidden state of ``<s>``)."""
    return model.itm_output(model.roberta.pooler(run_backbone(model, batch)))


@register_task("itm")
class ItmObjective(Objective):
    """With p = itm_neg_prob the image is another one (label 0), else the caption's own (label 1)."""

    stat_keys = ("loss", "n", "correct")

    def build_example(self, source: ExampleSource, index: int, rng: np.random.Generator) -> dict:
        record = source.text(index)
        fname = record.fields["img_fname"]
        matched = rng.random() >= self.settings.itm_neg_prob
        if not matched:
            fname = source.other_image(record.part, fname, rng)
        example = text_example(wrap_text(record.fields["input_ids"], record.meta), source.image(record.part, fname))
        example["target"] = int(matched)
        return example

    def collate(self, examples: list[dict]) -> dict:
        batch = collate_backbone(examples)
        batch["targets"] = torch.tensor([ex["target"] for ex in examples], dtype=torch.long)  # (B,)
        return batch

    def compute_loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss = F.cross_entropy(itm_logits(model, batch).float(), batch["targets"])
        return loss, {"loss": loss.item()}

    def eval_stats(self, model, batch: dict) -> dict[str, float]:
        logits = itm_logits(model, batch).float()
        targets = batch["targets"]
        return {"loss": F.cross_entropy(logits, targets, reduction="sum").item(), "n": float(targets.numel()),
                "correct": (logits.argmax(-1) == targets).sum().item()}
