"""Dual-encoder training tasks (the trainer's TrainTask protocol, docs/ARCHITECTURE.md): native contrastive
training of the English dual encoder, and MLA's two stages, NLT and LE, one task PER LANGUAGE so that the
trainer's uniform draw gives monolingual batches with the language drawn uniformly (MLA's MetaLoader).

* ``native_<lang>``: symmetric InfoNCE with the model's learned ``logit_scale``; everything trains.
* ``nlt_<lang>``: MSE between the acquisition encoder on X and the frozen English features of the parallel
  sentence (unnormalised, teacher under ``no_grad``). Validation: the same MSE on the val pairs.
* ``le_<lang>``: InfoNCE of X captions against the frozen image features, temperature FIXED (not learned);
  one caption per image per batch. Validation (``le_`` and ``native_``): AR on the val captions.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from data.mla_data import EpochBatches, ImageCaptions, ParallelText, item_rngs
from utils.device import move_to_device
from model.clip import clip_contrastive_loss
from model.mla import le_loss, nlt_loss


@dataclass
class DualTaskOptions:
    """What every dual-encoder task shares: batch size (examples per rank), seed, ranks, device."""

    batch_size: int
    seed: int
    rank: int = 0
    world_size: int = 1
    device: str | torch.device = "cpu"
    max_len: int = 77


class NLTTask:
    """Native Language Transfer for one language (see module docstring)."""

    def __init__(self, lang: str, train: ParallelText, opts: DualTaskOptions, val: ParallelText | None = None,
                 native_lang: str = "en", weight: float = 1.0):
        self.name, self.weight, self.lang, self.native_lang = f"nlt_{lang}", float(weight), lang, native_lang
        self.train, self.val, self.opts = train, val, opts
        self.order = EpochBatches(len(train), opts.batch_size, opts.seed, opts.rank, opts.world_size)

    def train_batches(self, start_batch: int = 0) -> Iterator[dict]:
        for _, idx in self.order.batches(start_batch):
            yield move_to_device(self.train.batch(idx), self.opts.device)

    def _loss(self, model, batch: dict) -> torch.Tensor:
        with torch.no_grad():
            teacher = model.encode_text(batch["native_ids"], self.native_lang)      # (B, E)
        return nlt_loss(model.encode_text(batch["input_ids"], self.lang).float(), teacher.float())

    def compute_loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        return self._loss(model, batch), {}

    @torch.no_grad()
    def validate(self, model) -> dict[str, float]:
        """Mean MSE over all val pairs (every rank computes the same full set)."""
        if self.val is None:
            return {}
        total, n = 0.0, len(self.val)
        for start in range(0, n, 256):
            idx = list(range(start, min(n, start + 256)))
            total += float(self._loss(model, move_to_device(self.val.batch(idx), self.opts.device))) * len(idx)
        return {"mse": total / n}


class ContrastiveTask:
    """Image-caption InfoNCE for one language. ``fixed_temperature``: None = the model's learned scale (native
    training); > 0 = MLA's LE with that fixed τ; <= 0 = LE with the frozen native model's learned τ (read from
    ``model.native.logit_scale``, which no optimizer holds). ``val_set``: a RetrievalSet for AR."""

    def __init__(self, name: str, lang: str, train: ImageCaptions, opts: DualTaskOptions,
                 fixed_temperature: float | None, val_set=None, weight: float = 1.0):
        self.name, self.weight, self.lang = name, float(weight), lang
        self.train, self.opts, self.val_set = train, opts, val_set
        self.fixed_temperature = fixed_temperature
        self.order = EpochBatches(len(train), opts.batch_size, opts.seed, opts.rank, opts.world_size)

    def train_batches(self, start_batch: int = 0) -> Iterator[dict]:
        for epoch, idx in self.order.batches(start_batch):
            yield move_to_device(self.train.batch(idx, item_rngs(self.opts.seed, epoch, idx)), self.opts.device)

    def compute_loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        image_inputs = (batch["img_feat"], batch["img_pos_feat"], batch["img_mask"])
        text = model.encode_text(batch["input_ids"], self.lang).float()            # (B, E)
        if self.fixed_temperature is None:
            image = model.encode_image(*image_inputs).float()
            scale = model.logit_scale.exp().clamp(max=100.0)  # CLIP's cap on 1/τ
            return clip_contrastive_loss(image, text, scale), {"logit_scale": float(scale.detach())}
        with torch.no_grad():
            image = model.encode_image(*image_inputs).float()
            tau = self.fixed_temperature if self.fixed_temperature > 0 else float(1.0 / model.native.logit_scale.exp())
        return le_loss(image, text, tau), {}

    @torch.no_grad()
    def validate(self, model) -> dict[str, float]:
        """Recall@K and AR on the val captions (the project's retrieval metrics)."""
        if self.val_set is None:
            return {}
        from evaluation.dual_eval import dual_scores
        from evaluation.retrieval_metrics import retrieval_recalls

        return retrieval_recalls(dual_scores(model, self.val_set, self.lang, self.opts.max_len),
                                 self.val_set.txt2img)


def build_mla_tasks(cfg, ctx) -> list:
    """The tasks of a ``training.mla_config.DualRunConfig``: one per (objective, language), equal weights, so
    languages are drawn uniformly (MLA's monolingual batches). ``ctx``: the run's TaskContext (device, ranks)."""
    from evaluation.itm_eval import load_retrieval_set

    img_db = ctx.img_db(cfg.img_db)
    opts = DualTaskOptions(cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size, ctx.device, cfg.max_txt_len)
    db = lambda path: ctx.open_txt_db(path, max_txt_len=None)  # noqa: E731 - truncation keeps </s> (data.mla_data)
    tasks: list = []
    for data in cfg.languages:
        if cfg.stage in ("nlt", "nlt+le"):
            val = ParallelText(db(data.val_paired_db), cfg.native_lang, data.lang, cfg.max_txt_len) \
                if data.val_paired_db else None
            tasks.append(NLTTask(data.lang, ParallelText(db(data.paired_db), cfg.native_lang, data.lang,
                                                         cfg.max_txt_len), opts, val, cfg.native_lang))
        if cfg.stage in ("native", "le", "nlt+le"):
            val_set = load_retrieval_set(f"{data.lang}_val", db(data.val_caption_db), img_db) \
                if data.val_caption_db else None
            name = f"{'native' if cfg.stage == 'native' else 'le'}_{data.lang}"
            tasks.append(ContrastiveTask(name, data.lang, ImageCaptions(db(data.caption_db), img_db, cfg.max_txt_len),
                                         opts, None if cfg.stage == "native" else cfg.le_temperature, val_set))
    return tasks


# ------------------------------------------------------------------------------------------ the run (train.py --task mla)
def build_mla_model(cfg, ctx, tasks) -> tuple:
    """Stage 'native': a new dual encoder (region width from the img_db); else MLA around the frozen native."""
    from training.mla_setup import build_acquisition, load_native, new_native

    if cfg.stage == "native":
        model = new_native(cfg, ctx.img_db(cfg.img_db).feat_dim)
        return model, model.cfg.to_dict()
    native = load_native(cfg)
    model = build_acquisition(cfg, native)
    return model, {"native": native.cfg.to_dict(), "acquisition": model.cfg.to_dict()}


def finish_mla(cfg, trainer, ctx, metrics) -> str:
    """Write ``model_final.pt`` (stage native: the dual encoder; MLA: only θ_emb and acquirers) and the test
    table; returns its Markdown ('' without test sets)."""
    from pathlib import Path

    from evaluation.dual_eval import evaluate_run
    from utils import distributed as du
    from utils.atomic import atomic_torch_save

    model = trainer.model
    final = model.state_dict() if cfg.stage == "native" else model.trainable_state_dict()
    if du.is_main():
        atomic_torch_save(final, Path(cfg.output_dir) / "model_final.pt")
    table = evaluate_run(cfg, model) if cfg.test_datasets else ""
    if table and du.is_main():
        print(table, flush=True)
    return table


def _register() -> None:
    from tasks.registry import RunSpec, register_run
    from training.mla_config import DualRunConfig

    register_run(RunSpec(name="mla", config=DualRunConfig, build_tasks=build_mla_tasks,
                         build_model=build_mla_model, finish=finish_mla))


_register()
