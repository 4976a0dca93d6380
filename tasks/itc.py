"""ITC: image-text contrastive learning of the shortlist head ``itc`` (symmetric InfoNCE, in-batch negatives).

Each example is a caption and its own image. The batch is embedded by two extra backbone passes, one
text-only and one image-only (model/itc.py: every backbone layer is read, the last layer's states are
mean-pooled over real tokens / regions, projected by ``itc.text_proj`` / ``itc.image_proj`` and
L2-normalised). With t (B, dim), v (B, dim) and s = exp(logit_scale) (learned) or 1 / temperature (fixed):

    logits = s * t @ v.T  (B, B);  loss = (CE(logits, diag) + CE(logits.T, diag)) / 2

Two captions of the same image in one batch are not negatives of each other's image: such off-diagonal
entries are masked out of both softmaxes (``img_ids``).

Cost: no pair pass, so an ITC batch of B examples costs about one ITM batch of B pairs (text-only
sequences of Lt tokens plus image-only sequences of Ni regions, vs one packed Lt + Ni sequence); in a
pretraining mix it adds the two single-modality passes per ITC batch, nothing to the other objectives.
Measured figures are in docs/notes/fastret.md.

Usable in a pretraining dataset's ``tasks`` (``{"task": "itc", "temperature": 0.05}``) and mixed into the
retrieval fine-tune (``training/itm_config.py``: ``"tasks": [{"task": "itc", "batch_size": 32}]``), so a
fine-tuned model carries its own shortlist head (evaluation/shortlist.py).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from data.collate import collate_backbone
from model.itc import ITC_HEAD, image_pooled, itc_head, itc_head_factory, project, region_mask, text_pooled
from tasks.base import ExampleSource, Objective, TaskConfig, text_example, wrap_text
from tasks.registry import register_task
from utils.config import field
from utils.errors import ConfigError

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp: a learned temperature never goes below 0.01


@dataclass
class ItcConfig(TaskConfig):
    """Knobs of the contrastive objective and of its head."""

    dim: int = field(256, help="width of the shared embedding space (itc.text_proj / itc.image_proj outputs)")
    temperature: float = field(0.07, help="softmax temperature (the initial one when learn_temperature)")
    learn_temperature: bool = field(True, help="train itc.logit_scale = log(1/temperature); false: fixed")
    train_backbone: bool = field(False, help="false: train only the itc head on the backbone's detached states "
                                             "(the cross-encoder is untouched); true: gradients reach the backbone")
    batch_size: int = field(0, help="examples per ITC batch (in-batch negatives: batch_size - 1); 0 = the run's "
                                    "train_batch_size in tokens (pretraining). A retrieval fine-tune needs > 0")

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ConfigError(f"dim: expected >= 1, got {self.dim}")
        if not 0.0 < self.temperature <= 10.0:
            raise ConfigError(f"temperature: expected a value in (0, 10], got {self.temperature}")
        if self.batch_size < 0 or self.batch_size == 1:
            raise ConfigError(f"batch_size: expected 0 (the run's) or >= 2 (in-batch negatives), got {self.batch_size}")


def image_key(part: int, fname: str) -> int:
    """An id of image ``fname`` of part ``part`` (equal ids = same image), for the false-negative mask."""
    return zlib.crc32(f"{part}/{fname}".encode("utf-8"))


def itc_logits(model, batch: dict, settings: ItcConfig) -> torch.Tensor:
    """(B, B) scaled similarities, caption i x image j, same-image off-diagonal entries at -inf."""
    with torch.set_grad_enabled(settings.train_backbone and torch.is_grad_enabled()):
        txt = text_pooled(model, batch["input_ids"], batch["position_ids"])                      # (B, H)
        img = image_pooled(model, batch["img_feat"], batch["img_pos_feat"], batch["img_valid"])  # (B, H)
    txt, img = project(model.itc.text_proj, txt), project(model.itc.image_proj, img)          # (B, dim)
    scale = model.itc.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE) if settings.learn_temperature \
        else torch.tensor(1.0 / settings.temperature, device=txt.device)
    logits = scale * txt @ img.T
    ids = batch["img_ids"]
    same = (ids[:, None] == ids[None, :]) & ~torch.eye(len(ids), dtype=torch.bool, device=ids.device)
    return logits.masked_fill(same, float("-inf"))


def symmetric_infonce(logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean of the text->image and image->text cross-entropies against the diagonal."""
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target, reduction=reduction)
            + F.cross_entropy(logits.T, target, reduction=reduction)) / 2


def build_itc(settings: ItcConfig, ctx):
    """The TrainTask on the context's dataset; ``batch_size`` > 0 counts examples, not tokens."""
    return ctx.objective_task(ItcObjective(settings), batch_examples=settings.batch_size)


@register_task("itc", config=ItcConfig, build=build_itc)
class ItcObjective(Objective):
    """Caption + own image; the loss contrasts every caption with the batch's images and vice versa."""

    stat_keys = ("loss", "n")
    heads = {ITC_HEAD: itc_head}

    def __init__(self, settings: ItcConfig):
        super().__init__(settings)
        # The task's own knobs shape the head (instance attribute: what the built task declares).
        self.heads = {ITC_HEAD: itc_head_factory(settings.dim, settings.temperature, settings.learn_temperature)}

    def build_example(self, source: ExampleSource, index: int, rng: np.random.Generator) -> dict:
        record = source.text(index)
        fname = record.fields["img_fname"]
        example = text_example(wrap_text(record.fields["input_ids"], record.meta), source.image(record.part, fname))
        example["img_id"] = image_key(record.part, fname)
        return example

    def collate(self, examples: list[dict]) -> dict:
        batch = collate_backbone(examples)
        batch["img_valid"] = region_mask(torch.tensor(batch["num_bbs"]), batch["img_feat"].size(1))  # (B, Ni)
        batch["img_ids"] = torch.tensor([ex["img_id"] for ex in examples], dtype=torch.long)        # (B,)
        return batch

    def compute_loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        logits = itc_logits(model, batch, self.settings)
        loss = symmetric_infonce(logits)
        return loss, {"loss": loss.detach(), "scale": model.itc.logit_scale.detach().exp()}

    def eval_stats(self, model, batch: dict) -> dict[str, float]:
        """Validation: ``loss`` = 1 - cosine of each caption with its own image, summed. The in-batch
        InfoNCE depends on which examples share a batch, and that changes with the world size; this
        per-example alignment does not (the contract's 1 vs 2 ranks check)."""
        txt = project(model.itc.text_proj, text_pooled(model, batch["input_ids"], batch["position_ids"]))
        img = project(model.itc.image_proj, image_pooled(model, batch["img_feat"], batch["img_pos_feat"],
                                                         batch["img_valid"]))
        return {"loss": float((1.0 - (txt * img).sum(-1)).sum()), "n": float(len(txt))}
