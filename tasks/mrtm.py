"""MRTM (masked region-to-token modelling; ``vmlm`` in the original code).

A masked region's target is one sub-token, drawn at random, of the caption-language word for the
region's detector top-1 class; it is predicted by the shared MLM head over the whole vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from data.labels import LabelVocab
from model.heads import mlm_head
from tasks.base import ExampleSource, MaskingConfig, RegionMaskObjective, TextRecord
from tasks.registry import register_task
from utils.config import field
from utils.errors import ConfigError, DataError


@dataclass
class MrtmConfig(MaskingConfig):
    """MRTM knobs: the masking probability and the folder of translated class words."""

    label_dir: str = field("", help="objects_vocab_<lang>.txt files: detector class words per language")


def _source_langs(source: ExampleSource) -> list[str]:
    """Caption languages of a source's txt_dbs (meta 'lang', else the first example's 'lang')."""
    langs = []
    for txt, _ in source.parts:
        lang = txt.meta.get("lang") or (txt[txt.ids[0]].get("lang") if txt.ids else None)
        if not lang:
            raise ConfigError(f"{getattr(txt, 'db_dir', 'txt_db')}: MRTM needs the caption language "
                              f"('lang' in meta.json or in the examples)")
        langs.append(lang)
    return langs


def label_vocab(cfg: MrtmConfig, tokenizer, sources: list[ExampleSource]) -> LabelVocab:
    """Class words in every caption language of ``sources``, tokenised once (the task's resource)."""
    if not cfg.label_dir:
        raise ConfigError("label_dir: required by the MRTM task (objects_vocab_<lang>.txt files)")
    langs = [lang for source in sources for lang in _source_langs(source)]
    img = sources[0].parts[0][1]
    num_classes = getattr(img, "label_dim", None)
    if not num_classes:
        raise ConfigError(f"{getattr(img, 'db_dir', 'img_db')}: MRTM needs detector soft labels, none stored")
    return LabelVocab.load(cfg.label_dir, langs, num_classes, tokenizer)


def build_mrtm(cfg: MrtmConfig, ctx) -> object:
    """One vocabulary for the run (every dataset listing MRTM), then the objective on ctx's dataset."""
    sources = ctx.sources_of.get("mrtm") or [ctx.dataset.train]
    vocab = ctx.resource(("mrtm", cfg.label_dir), lambda: label_vocab(cfg, ctx.tokenizer, sources))
    return ctx.objective_task(MrtmObjective(cfg, vocab))


@register_task("mrtm", config=MrtmConfig, aliases=("vmlm",), build=build_mrtm)
class MrtmObjective(RegionMaskObjective):
    """Regions masked (p = mask_prob, >= 1), text unmasked; CE of ``model.cls`` on masked regions."""

    stat_keys = ("loss", "n", "correct")
    heads = {"cls": mlm_head}

    def __init__(self, settings: MrtmConfig, label_vocab: LabelVocab | None = None):
        super().__init__(settings)
        self.label_vocab = label_vocab

    def add_example_targets(self, example: dict, record: TextRecord, rng: np.random.Generator) -> None:
        vocab = self.label_vocab
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
