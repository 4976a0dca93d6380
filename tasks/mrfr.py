"""MRFR ablation (from UNITER): regress the D-dim feature of masked regions with MSE."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks.base import RegionMaskObjective
from tasks.registry import register_task


@register_task("mrfr")
class MrfrObjective(RegionMaskObjective):
    """Regions masked (the model zeroes their input feature), text unmasked; MSE to the true features."""

    needs_soft_labels = False

    def add_targets(self, batch: dict, examples: list[dict]) -> None:
        feats = [ex["img_feat"][ex["img_masks"]] for ex in examples]
        batch["feat_targets"] = torch.cat(feats)  # (n_masked, D)

    def _errors(self, model, batch: dict) -> torch.Tensor:
        """Squared errors (n_masked, D)."""
        pred = model.feat_regress(self.masked_hidden(model, batch)).float()
        return F.mse_loss(pred, batch["feat_targets"].float(), reduction="none")

    def compute_loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss = self._errors(model, batch).mean()
        return loss, {"loss": loss.item()}

    def eval_stats(self, model, batch: dict) -> dict[str, float]:
        errors = self._errors(model, batch)
        # Per-region loss (mean over D) summed, so finalize's division by n gives the mean MSE.
        return {"loss": errors.mean(-1).sum().item(), "n": float(len(errors))}
