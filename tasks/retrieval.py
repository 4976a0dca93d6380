"""Retrieval fine-tuning task ``itm_rank``: a hinge ranking loss over sampled or hard negatives.

For every positive (caption, image) pair the batch holds a group of ``1 + 2n`` rows::

    row 0            caption x its image          (positive)
    rows 1 .. n      caption x n negative images  (never its own image)
    rows n+1 .. 2n   n negative captions x image  (never a caption of the same image)

score = sigmoid(rank_output(pooled)); loss = mean over the 2k negatives of max(0, margin + s_neg - s_pos).

Random mode draws ``n = k`` negatives per side from the example's draw seed (numpy Generator; the same
on every run, rank and resume). Hard-negative mode (UNITER-style, ``hard_neg_every > 0``): on every
``hard_neg_every``-th batch of the task the group holds a pool of ``n = hard_neg_pool`` candidates per
side; :meth:`RetrievalTask.compute_loss` scores the whole pool with the current model (eval mode, no
grad), keeps the k highest-scoring negatives per side and trains on those rows only.

Language settings are configuration only: the training set is a list of (txt_db, img_db) parts
(English only, one language, or all languages); parts are concatenated under one flat index that is
sampled uniformly, so each part is drawn in proportion to its size. Negatives come from the same part.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data.collate import collate_backbone
from utils.errors import DataError
from data.sampler import TokenBucketSampler
from tasks.base import LoaderOptions, run_backbone, text_example, wrap_text
from utils.device import move_to_device
from tasks.registry import register_task
from evaluation import itm_eval
from evaluation.retrieval_metrics import retrieval_recalls

BACKBONE_KEYS = ("input_ids", "position_ids", "img_feat", "img_pos_feat", "attn_masks", "gather_index")


@dataclass(frozen=True)
class RankSettings:
    """Knobs of the ranking loss and of negative mining.

    Attributes:
        negative_size: k, negatives per side trained on for each positive.
        margin: hinge margin between the positive and each negative score.
        hard_neg_every: 0 = random negatives only; n >= 1 = every n-th batch mines hard negatives.
        hard_neg_pool: candidates per side scored when mining (must be >= negative_size).
    """

    negative_size: int = 1
    margin: float = 0.2
    hard_neg_every: int = 0
    hard_neg_pool: int = 16

    def __post_init__(self) -> None:
        if self.negative_size < 1:
            raise ValueError(f"negative_size: expected >= 1, got {self.negative_size}")
        if self.hard_neg_every < 0:
            raise ValueError(f"hard_neg_every: expected >= 0, got {self.hard_neg_every}")
        if self.hard_neg_every and self.hard_neg_pool < self.negative_size:
            raise ValueError(f"hard_neg_pool ({self.hard_neg_pool}) must be >= negative_size "
                             f"({self.negative_size})")

    def pool_size(self, batch_number: int) -> int:
        """Negatives per side drawn for the task's ``batch_number``-th batch (0-based)."""
        if self.hard_neg_every and batch_number % self.hard_neg_every == 0:
            return self.hard_neg_pool
        return self.negative_size


class PairSource:
    """Positive pairs of one or more ``(TxtDb, ImgDb)`` parts under one flat index.

    Per part: ``ids`` (caption ids), ``images`` (sorted image names) and ``cap_img`` (n_cap,) int64,
    the image index of every caption, which is what negative drawing needs.
    """

    def __init__(self, parts: Sequence[tuple[Any, Any]]):
        if not parts:
            raise DataError("itm_rank: expected at least one (txt_db, img_db) training part, got none")
        self.parts = list(parts)
        self.ids: list[list[str]] = []
        self.images: list[list[str]] = []
        self.cap_img: list[np.ndarray] = []
        for txt, img in self.parts:
            self._add_part(txt, img)
        self._offsets = np.cumsum([0] + [len(ids) for ids in self.ids])

    def _add_part(self, txt, img) -> None:
        ids = [str(i) for i in txt.ids]
        fnames = [txt.txt2img[i] for i in ids]
        names = sorted(set(fnames))
        where = getattr(txt, "db_dir", "txt_db")
        if len(names) < 2:
            raise DataError(f"{where}: itm_rank needs captions of at least two images, found {len(names)}")
        missing = [f for f in names if f not in img.name2nbb]
        if missing:
            raise DataError(f"{where}: image {missing[0]!r} is not in image db "
                            f"{getattr(img, 'img_dir', img)} ({len(missing)} missing)")
        col = {f: j for j, f in enumerate(names)}
        self.ids.append(ids)
        self.images.append(names)
        self.cap_img.append(np.array([col[f] for f in fnames], dtype=np.int64))

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(part, caption index within the part) of flat ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"pair index {index} outside 0..{len(self) - 1}")
        part = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return part, index - int(self._offsets[part])

    def caption(self, part: int, cap: int) -> torch.Tensor:
        """``<s> ids </s>`` (Lt,) of caption ``cap`` of ``part``."""
        txt = self.parts[part][0]
        return wrap_text(txt[self.ids[part][cap]]["input_ids"], txt.meta)

    def image(self, part: int, img: int) -> dict[str, torch.Tensor]:
        """``img_feat`` (n, D) and ``img_pos_feat`` (n, 7) of image index ``img`` of ``part``."""
        feat, pos = itm_eval.image_arrays(self.parts[part][1], self.images[part][img])
        return {"img_feat": torch.from_numpy(feat), "img_pos_feat": torch.from_numpy(pos)}

    def negative_images(self, part: int, cap: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n,) image indices other than the caption's own; distinct while there are enough."""
        n_img, own = len(self.images[part]), self.cap_img[part][cap]
        draw = rng.choice(n_img - 1, size=n, replace=n > n_img - 1)
        return draw + (draw >= own)  # skip over the own image's slot

    def negative_captions(self, part: int, cap: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n,) caption indices whose image differs from caption ``cap``'s image (uniform, with
        replacement), by rejection: each draw is kept with probability (captions of other images)/all."""
        cap_img = self.cap_img[part]
        own = cap_img[cap]
        out: list[np.ndarray] = []
        got = 0
        while got < n:
            draw = rng.integers(len(cap_img), size=2 * (n - got) + 4)
            draw = draw[cap_img[draw] != own][: n - got]
            out.append(draw)
            got += len(draw)
        return np.concatenate(out)


def hinge_rank_loss(pos: torch.Tensor, neg: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over all negatives of ``max(0, margin + neg - pos)``: pos (B,), neg (B, 2k) -> scalar."""
    return torch.clamp(margin + neg - pos[:, None], min=0).mean()


class RankDataset(Dataset):
    """Map-style dataset keyed by ``(pair index, draw seed, n)``: one group of ``1 + 2n`` examples."""

    def __init__(self, source: PairSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int, int]) -> list[dict]:
        index, draw_seed, n = (int(v) for v in key)
        rng = np.random.default_rng(draw_seed)
        part, cap = self.source.locate(index)
        src = self.source
        own_txt, own_img = src.caption(part, cap), src.image(part, src.cap_img[part][cap])
        group = [text_example(own_txt, own_img)]
        group += [text_example(own_txt, src.image(part, j)) for j in src.negative_images(part, cap, n, rng)]
        group += [text_example(src.caption(part, c), own_img) for c in src.negative_captions(part, cap, n, rng)]
        return group


def rank_collate(groups: list[list[dict]]) -> dict:
    """Backbone keys for B groups of 1 + 2n rows (group-major), plus ``n_neg`` (int)."""
    batch = collate_backbone([ex for group in groups for ex in group])
    batch["n_neg"] = (len(groups[0]) - 1) // 2
    return batch


class _PoolBatches:
    """Batch sampler: the token-bucket sampler's (index, seed) batches with each batch's pool size."""

    def __init__(self, sampler: TokenBucketSampler, start_batch: int, settings: RankSettings):
        self.sampler, self.start_batch, self.settings = sampler, start_batch, settings

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for number, batch in enumerate(self.sampler.batches(self.start_batch), start=self.start_batch):
            n = self.settings.pool_size(number)
            yield [(i, s, n) for i, s in batch]


def rank_logits(model, batch: dict) -> torch.Tensor:
    """(rows,) rank logits from the pooled output."""
    return model.rank_output(model.roberta.pooler(run_backbone(model, batch))).squeeze(-1).float()


def select_rows(batch: dict, rows: torch.Tensor) -> dict:
    """The backbone keys of ``batch`` restricted to ``rows`` (R,), packed length trimmed to fit."""
    out = {key: batch[key].index_select(0, rows) for key in BACKBONE_KEYS}
    length = int(out["attn_masks"].sum(1).max())
    out["attn_masks"], out["gather_index"] = out["attn_masks"][:, :length], out["gather_index"][:, :length]
    return out


@torch.no_grad()
def mine_hard_negatives(model, batch: dict, k: int) -> tuple[dict, dict[str, float]]:
    """Keep, per group, the positive and the k highest-scoring negatives of each side of its pool.

    Scores the whole pool (B * (1 + 2n) rows) in eval mode, then returns a batch of B * (1 + 2k) rows in
    the same group layout, and logs the mean sigmoid score of the kept negatives and of the whole pool.
    """
    n = batch["n_neg"]
    was_training = model.training
    model.eval()
    try:
        scores = torch.sigmoid(rank_logits(model, batch)).view(-1, 1 + 2 * n)   # (B, 1 + 2n)
    finally:
        model.train(was_training)
    top_img = scores[:, 1:1 + n].topk(k, dim=1).indices + 1                    # (B, k) columns
    top_txt = scores[:, 1 + n:].topk(k, dim=1).indices + 1 + n                 # (B, k)
    cols = torch.cat([torch.zeros_like(top_img[:, :1]), top_img, top_txt], 1)  # (B, 1 + 2k)
    rows = (torch.arange(len(scores), device=cols.device)[:, None] * (1 + 2 * n) + cols).reshape(-1)
    kept = scores.gather(1, cols[:, 1:])
    logs = {"hard_neg_score": kept.mean().item(), "pool_neg_score": scores[:, 1:].mean().item()}
    out = select_rows(batch, rows)
    out["n_neg"] = k
    return out, logs


@register_task("itm_rank")
class RetrievalTask:
    """TrainTask (docs/ARCHITECTURE.md) for retrieval fine-tuning.

    Args:
        name, weight: the trainer's task key and mix weight.
        source: training pairs; settings: loss and mining knobs.
        batch_size: positive pairs per micro-batch (each adds 2k negative rows).
        val_sets: retrieval sets for :meth:`validate` (recall; ``r_mean`` is the metric to keep best).
        score_settings: block sizes / precision of validation scoring.
    """

    def __init__(self, name: str, source: PairSource, settings: RankSettings, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, weight: float = 1.0,
                 val_sets: Sequence[itm_eval.RetrievalSet] = (),
                 score_settings: itm_eval.ScoreSettings | None = None, options: LoaderOptions | None = None):
        self.name, self.weight = name, float(weight)
        self.source, self.settings = source, settings
        self.dataset = RankDataset(source)
        # Every pair counts as one "token", so a batch holds exactly batch_size pairs.
        self.sampler = TokenBucketSampler(np.ones(len(source), dtype=np.int64), batch_tokens=batch_size,
                                          bucket_size=max(len(source), 1), size_multiple=1, seed=seed,
                                          rank=rank, world_size=world_size)
        self.val_sets = list(val_sets)
        self.score_settings = score_settings or itm_eval.ScoreSettings(head="rank")
        self.options = options or LoaderOptions()

    def train_batches(self, start_batch: int = 0) -> Iterator[dict]:
        """Infinite, deterministic batches on the task's device, skipping the first ``start_batch``."""
        opts = self.options
        # A DataLoader iterator draws its worker base seed from the GLOBAL torch RNG unless given its own
        # generator; that draw would shift the dropout masks of a resumed run (the iterator is created
        # after the trainer restored the RNG), so the loader gets a private generator.
        loader = DataLoader(self.dataset, batch_sampler=_PoolBatches(self.sampler, start_batch, self.settings),
                            collate_fn=rank_collate, num_workers=opts.num_workers, pin_memory=opts.pin_memory,
                            generator=torch.Generator().manual_seed(self.sampler.seed))
        for batch in loader:
            yield move_to_device(batch, opts.device)

    def compute_loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Hinge loss of one micro-batch; pools larger than k are mined for hard negatives first."""
        k, logs = self.settings.negative_size, {}
        if batch["n_neg"] > k:
            batch, logs = mine_hard_negatives(model, batch, k)
        scores = torch.sigmoid(rank_logits(model, batch)).view(-1, 1 + 2 * k)     # (B, 1 + 2k)
        loss = hinge_rank_loss(scores[:, 0], scores[:, 1:], self.settings.margin)
        logs.update(loss=loss.item(), pos_score=scores[:, 0].mean().item(), neg_score=scores[:, 1:].mean().item())
        return loss, logs

    def validate(self, model) -> dict[str, float]:
        """Recall metrics per validation set (prefixed by its name when several) and ``r_mean``, the
        mean AR over the sets. Identical on every rank (the score matrix is gathered)."""
        if not self.val_sets:
            return {}
        out: dict[str, float] = {}
        for val in self.val_sets:
            recalls = retrieval_recalls(itm_eval.score_matrix(model, val, self.score_settings), val.txt2img)
            prefix = f"{val.name}/" if len(self.val_sets) > 1 else ""
            out.update({f"{prefix}{key}": value for key, value in recalls.items()})
        if len(self.val_sets) > 1:
            out["r_mean"] = float(np.mean([out[f"{v.name}/r_mean"] for v in self.val_sets]))
        return out

