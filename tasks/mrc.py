"""MRC ablations: classify masked regions into the detector classes (paper table 5).

``mrc``: cross-entropy to the detector's top-1 non-background class (as UNITER: background is never a
target). ``mrc-kl``: KL divergence from the detector's soft label distribution (n, C) to the prediction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks.base import RegionMaskObjective
from tasks.registry import register_task


def hard_targets(soft: torch.Tensor) -> torch.Tensor:
    """(n,) top-1 class among 1..C-1 of soft labels (n, C); index 0 (background) is skipped."""
    return soft[:, 1:].argmax(-1) + 1


@register_task("mrc")
class MrcObjective(RegionMaskObjective):
    """Regions masked, text unmasked; CE of ``model.region_classifier`` against the argmax class."""

    stat_keys = ("loss", "n", "correct")

    def add_targets(self, batch: dict, examples: list[dict]) -> None:
        soft = [ex["soft_labels"][ex["img_masks"]] for ex in examples]
        batch["mrc_label_targets"] = torch.cat(soft)  # (n_masked, C)

    def _logits(self, model, batch: dict) -> torch.Tensor:
        return model.region_classifier(self.masked_hidden(model, batch)).float()  # (n_masked, C)

    def region_loss(self, logits: torch.Tensor, soft: torch.Tensor, reduction: str) -> torch.Tensor:
        return F.cross_entropy(logits, hard_targets(soft), reduction=reduction)

    def compute_loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss = self.region_loss(self._logits(model, batch), batch["mrc_label_targets"], "mean")
        return loss, {"loss": loss.item()}

    def eval_stats(self, model, batch: dict) -> dict[str, float]:
        logits, soft = self._logits(model, batch), batch["mrc_label_targets"]
        return {"loss": self.region_loss(logits, soft, "sum").item(), "n": float(len(soft)),
                "correct": (logits.argmax(-1) == hard_targets(soft)).sum().item()}


@register_task("mrc-kl")
class MrcKlObjective(MrcObjective):
    """As MRC, with KL(soft labels || softmax(prediction)) per region instead of the argmax CE."""

    def region_loss(self, logits: torch.Tensor, soft: torch.Tensor, reduction: str) -> torch.Tensor:
        per_region = F.kl_div(F.log_softmax(logits, -1), soft.float(), reduction="none").sum(-1)  # (n,)
        return per_region.sum() if reduction == "sum" else per_region.mean()
