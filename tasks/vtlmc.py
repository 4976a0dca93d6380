"""VTLM-C (the MMT seed's visual TLM = TLM + masked region classification) and its TLM ablation.

Not UC2's "vtlm" (co-masking of aligned words, ``data/tasks/vtlm.py``): the names are kept apart
(``vtlmc``, ``tlmc``; ``tlm`` is already the original UC2 config's alias of UC2's VTLM).

Input (``MMT_FACTS.md`` §3): ``<s> L1 </s> <s> L2 </s>`` (the seed's ``</s> en </s></s> de </s>`` with
this project's XLM-R specials), positions restarting on the second side, the side's language per token;
VTLM-C adds the image's regions (first, in the seed's model). Text: every position but the first and
padding is chosen with p = mask_prob; chosen -> 80 % [MASK], 10 % random id, 10 % unchanged (separators
can be chosen). Regions (VTLM-C): each draws none / mask / keep / random with 0.85 / 0.12 / 0.015 / 0.015;
"random" takes the feature of a region drawn uniformly from the batch (its own box kept); targets are the
detector class (argmax of the soft labels) of every chosen region. Loss = text CE + region CE.
Validation: deterministic masking from the sampler's draw seeds, all chosen -> [MASK], at least one per
pair, images unmasked; reports perplexity.

Works with the seed's XLM-style model (``model.xlm.XlmModel``: regions first, language embeddings) and
with the UC2 backbone (``UC2ForPretraining``: text then regions, no language embeddings; its MLM head and
MRC head ``region_classifier`` predict).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from data.collate import collate_backbone, img_mask_target, pad_labels, pad_sequences
from utils.errors import DataError
from tasks.base import ExampleSource, MaskingConfig, Objective, run_backbone, text_example
from tasks.mlm import apply_actions, draw_actions
from tasks.registry import register_task

REGION_PRED = 0.15  # share of regions chosen (the seed's region_pred)
REGION_SHARES = (0.8, 0.1, 0.1)  # of the chosen: mask / keep / random
REGION_NONE, REGION_MASK, REGION_KEEP, REGION_RANDOM = 0, 1, 2, 3


def pair_sequence(ids1, ids2, meta: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """``<s> ids1 </s> <s> ids2 </s>`` (T1 + T2 + 4,) int64, side ids (0 / 1) and the second side's start."""
    cls, sep = meta["CLS"], meta["SEP"]
    ids = np.concatenate([[cls], ids1, [sep, cls], ids2, [sep]]).astype(np.int64)
    restart = len(ids1) + 2
    sides = (np.arange(len(ids)) >= restart).astype(np.int64)
    return ids, sides, restart


def choose_positions(length: int, mask_prob: float, rng: np.random.Generator, at_least_one: bool) -> np.ndarray:
    """(length,) bool: positions 1.. chosen with ``mask_prob``; position 0 never (the seed's rule)."""
    chosen = rng.random(length) < mask_prob
    chosen[0] = False
    if at_least_one and not chosen.any():
        chosen[1 + rng.integers(length - 1)] = True
    return chosen


def mask_text(ids: np.ndarray, mask_prob: float, meta: dict, rng: np.random.Generator, evaluation: bool
              ) -> tuple[np.ndarray, np.ndarray]:
    """Masked ids (L,) and labels (L,) (-1 off target). Training: 80/10/10; evaluation: all [MASK], >= 1."""
    chosen = choose_positions(len(ids), mask_prob, rng, at_least_one=evaluation)
    positions = np.flatnonzero(chosen)
    masked = ids.copy()
    if evaluation:
        masked[positions] = meta["MASK"]
    else:
        apply_actions(masked, positions, draw_actions(len(positions), rng), meta, rng)
    return masked, np.where(chosen, ids, -1)


def draw_region_actions(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n,) actions (none / mask / keep / random) and (n,) uniforms that pick a random region's source."""
    u = rng.random(n)
    mask_p, keep_p, _ = (REGION_PRED * s for s in REGION_SHARES)
    actions = np.full(n, REGION_NONE, dtype=np.int64)
    actions[u < REGION_PRED] = REGION_RANDOM
    actions[u < mask_p + keep_p] = REGION_KEEP
    actions[u < mask_p] = REGION_MASK
    return actions, rng.random(n)


def region_classes(soft_labels: torch.Tensor) -> torch.Tensor:
    """Detector class per region: argmax of the soft labels (n, C) -> (n,) long."""
    return soft_labels.argmax(-1)


def replace_random_regions(img_feat: torch.Tensor, actions: torch.Tensor, picks: torch.Tensor,
                           num_bbs: list[int]) -> torch.Tensor:
    """Regions with action "random" take the feature of a region drawn from the whole batch.

    img_feat (B, Ni, D); actions (B, Ni) long; picks (B, Ni) float in [0, 1) choose among the batch's
    sum(num_bbs) real regions. Boxes are not touched. Returns a new (B, Ni, D) tensor.
    """
    valid = torch.arange(img_feat.size(1))[None, :] < torch.tensor(num_bbs)[:, None]  # (B, Ni)
    pool = img_feat[valid]  # (N_real, D), read before any replacement
    rand = actions == REGION_RANDOM
    if not rand.any():
        return img_feat
    source = (picks[rand] * len(pool)).long().clamp(max=len(pool) - 1)
    out = img_feat.clone()
    out[rand] = pool[source]
    return out


def xlm_example_config(task: str, paths) -> "PretrainConfig":
    """Tiny pretraining config of ``task`` on the contract corpus (tests/_task_corpus.py) with the seed's
    XLM-style model (``paths["xlm_model_config"]``): these tasks run on model/xlm.py, not the UC2 backbone."""
    from training.run_config import DatasetSpec, PretrainConfig

    data = dict(name="all", db=[paths["txt_db"]], img=[paths["img_db"]], tasks=[{"task": task}])
    return PretrainConfig(output_dir=paths["output_dir"], train_datasets=[DatasetSpec(**data)],
                          val_datasets=[DatasetSpec(**data)], model_config=paths["xlm_model_config"],
                          train_batch_size=120, val_batch_size=200)


def collate_xlm(examples: list[dict]) -> dict:
    """:func:`data.collate.collate_backbone` plus the seed model's keys: ``txt_mask`` (B, Lt) bool,
    ``img_valid`` (B, Ni) bool, ``side_ids`` (B, Lt) (-1 on padding) and ``pair_langs`` (per example)."""
    batch = collate_backbone(examples)
    lt, ni = batch["input_ids"].size(1), batch["img_feat"].size(1)
    batch["txt_mask"] = torch.arange(lt)[None, :] < torch.tensor(batch["txt_lens"])[:, None]
    batch["img_valid"] = torch.arange(ni)[None, :] < torch.tensor(batch["num_bbs"])[:, None]
    batch["side_ids"] = pad_sequences([ex["side_ids"] for ex in examples], pad=-1)
    batch["pair_langs"] = [ex["pair_langs"] for ex in examples]
    return batch


@register_task("vtlmc", config=MaskingConfig, example_config=lambda paths: xlm_example_config("vtlmc", paths))
class VtlmcObjective(Objective):
    """TLM + masked region classification on paired captions with their image (the MMT seed's VTLM)."""

    use_image = True
    stat_keys = ("loss", "n", "correct", "mrc_loss", "mrc_n", "mrc_correct")

    def __init__(self, settings: MaskingConfig, evaluation: bool = False):
        super().__init__(settings)
        self.evaluation = evaluation

    def for_validation(self) -> "VtlmcObjective":
        """The same objective with the validation masking (deterministic, all [MASK], images unmasked)."""
        return type(self)(self.settings, evaluation=True)

    def build_example(self, source: ExampleSource, index: int, rng: np.random.Generator) -> dict:
        record = source.text(index)
        fields = record.fields
        ids1, ids2 = fields.get("input_ids_lang1"), fields.get("input_ids_lang2")
        if not ids1 or not ids2:
            raise DataError(f"txt_db example {record.txt_id}: {self.name} needs a pair (input_ids_lang1 and "
                            f"input_ids_lang2, both non-empty)")
        ids, sides, restart = pair_sequence(ids1, ids2, record.meta)
        masked, labels = mask_text(ids, self.settings.mask_prob, record.meta, rng, self.evaluation)
        image = source.image(record.part, fields["img_fname"])
        example = text_example(torch.from_numpy(masked), image, restart_at=restart)
        example.update(txt_labels=torch.from_numpy(labels), side_ids=torch.from_numpy(sides),
                       pair_langs=(fields.get("lang1", "en"), fields.get("lang2", "de")))
        self._add_regions(example, image, source, record)
        return example if self.evaluation else self._draw_regions(example, rng)

    def _add_regions(self, example: dict, image: dict, source: ExampleSource, record) -> None:
        if not self.use_image:  # keep the feature width, drop every region
            example["img_feat"], example["img_pos_feat"] = image["img_feat"][:0], image["img_pos_feat"][:0]
            return
        if "soft_labels" not in image:
            raise DataError(f"{getattr(source.parts[record.part][1], 'db_dir', 'img_db')}, image "
                            f"{record.fields['img_fname']!r}: no soft_labels stored; {self.name} needs the "
                            f"detector classes")
        example["region_labels"] = region_classes(image["soft_labels"])

    def _draw_regions(self, example: dict, rng: np.random.Generator) -> dict:
        if not self.use_image:
            return example
        actions, picks = draw_region_actions(len(example["img_feat"]), rng)
        example["region_actions"] = torch.from_numpy(actions)
        example["region_picks"] = torch.from_numpy(picks.astype(np.float32))
        return example

    def collate(self, examples: list[dict]) -> dict:
        """Backbone keys (data/collate.py) plus the seed model's keys: ``txt_mask`` (B, Lt) bool,
        ``side_ids`` (B, Lt) (-1 on padding), ``pair_langs``, ``img_valid`` (B, Ni) bool; targets:
        ``txt_labels`` (B, Lt), ``region_masked``/``region_target`` (B, Ni) bool, ``region_labels`` (m,)."""
        batch = collate_xlm(examples)
        batch["txt_labels"] = pad_labels([ex["txt_labels"] for ex in examples])
        if not self.evaluation and (batch["txt_labels"] == -1).all():  # a batch needs one target
            batch["txt_labels"][0, 1] = batch["input_ids"][0, 1]
        if "region_actions" in examples[0]:
            self._collate_regions(batch, examples)
        return batch

    def _collate_regions(self, batch: dict, examples: list[dict]) -> None:
        actions = pad_sequences([ex["region_actions"] for ex in examples], pad=REGION_NONE)  # (B, Ni)
        picks = pad_sequences([ex["region_picks"] for ex in examples], pad=0.0)
        batch["img_feat"] = replace_random_regions(batch["img_feat"], actions, picks, batch["num_bbs"])
        batch["region_masked"] = actions == REGION_MASK
        batch["region_target"] = actions != REGION_NONE
        labels = pad_sequences([ex["region_labels"] for ex in examples], pad=0)
        batch["region_labels"] = labels[batch["region_target"]]
        targets = [t[:n] for t, n in zip(batch["region_target"], batch["num_bbs"])]
        batch["img_mask_tgt"] = img_mask_target(targets, batch["txt_lens"], batch["attn_masks"].size(1))

    def predict(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Token logits (n, V) at the text targets, their labels (n,), region logits (m, C) or None."""
        from model.xlm import XlmModel

        labels = batch["txt_labels"]
        region_masked = batch.get("region_masked")
        if isinstance(model, XlmModel):
            hidden, _ = model(batch, region_masked, use_image=self.use_image)  # (B, Ni + Lt, d)
            ni = hidden.size(1) - labels.size(1)
            txt, img = hidden[:, ni:], hidden[:, :ni]
            tok_head, reg_head = model.pred_layer.proj, model.img_pred_layer.proj
        else:  # UC2 backbone: text first, regions packed after each example's text
            hidden = run_backbone(model, batch, img_masks=region_masked)  # (B, L, H)
            txt, img = hidden[:, :labels.size(1)], hidden
            tok_head, reg_head = model.cls, model.region_classifier
        tok_logits = tok_head(txt[labels != -1])
        reg_logits = None
        if "region_target" in batch and batch["region_target"].any():
            where = batch["region_target"] if isinstance(model, XlmModel) else batch["img_mask_tgt"]
            reg_logits = reg_head(img[where])
        return tok_logits, labels[labels != -1], reg_logits

    def compute_loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        tok_logits, tok_labels, reg_logits = self.predict(model, batch)
        loss = F.cross_entropy(tok_logits.float(), tok_labels)
        logs = {"tlm_loss": loss.item(), "n_targets": float(tok_labels.numel())}
        if reg_logits is not None:
            mrc = F.cross_entropy(reg_logits.float(), batch["region_labels"])
            loss = loss + mrc
            logs.update(mrc_loss=mrc.item(), mrc_acc=(reg_logits.argmax(-1) == batch["region_labels"]).float().mean().item())
        logs["loss"] = loss.item()
        return loss, logs

    def eval_stats(self, model, batch: dict) -> dict[str, float]:
        tok_logits, tok_labels, reg_logits = self.predict(model, batch)
        stats = dict.fromkeys(self.stat_keys, 0.0)
        stats.update(loss=F.cross_entropy(tok_logits.float(), tok_labels, reduction="sum").item(),
                     n=float(tok_labels.numel()), correct=(tok_logits.argmax(-1) == tok_labels).sum().item())
        if reg_logits is not None:
            reg_labels = batch["region_labels"]
            stats.update(mrc_loss=F.cross_entropy(reg_logits.float(), reg_labels, reduction="sum").item(),
                         mrc_n=float(reg_labels.numel()), mrc_correct=(reg_logits.argmax(-1) == reg_labels).sum().item())
        return stats

    @staticmethod
    def finalize(sums: dict[str, float]) -> dict[str, float]:
        """Text loss, perplexity (exp of the mean text loss; lower is better) and accuracy; MRC where counted."""
        n = max(sums.get("n", 0.0), 1.0)
        metrics = {"loss": sums["loss"] / n, "ppl": math.exp(min(sums["loss"] / n, 50.0)), "acc": sums["correct"] / n}
        if sums.get("mrc_n"):
            metrics.update(mrc_loss=sums["mrc_loss"] / sums["mrc_n"], mrc_acc=sums["mrc_correct"] / sums["mrc_n"])
        return metrics


@register_task("tlmc", config=MaskingConfig, example_config=lambda paths: xlm_example_config("tlmc", paths))
class TlmcObjective(VtlmcObjective):
    """The TLM ablation of VTLM-C: the same text masking with no image at all (the seed's TLM baseline)."""

    use_image = False

