"""What the dual-encoder tasks read: English-X parallel text (NLT), per-language captions grouped by image
(LE and native training), and deterministic, resumable batch orders.

Texts are held as ``<s> ids </s>`` lists (truncated so that ``</s>`` stays last: the tower pools there).
Batches are dicts of tensors:
  NLT: ``native_ids`` (B, Le), ``input_ids`` (B, Lx) long, padded with PAD.
  LE / native: ``input_ids`` (B, L) long; ``img_feat`` (B, N, D), ``img_pos_feat`` (B, N, 7) float,
  ``img_mask`` (B, N) bool (True = real region). One caption per image: a batch never holds an image twice.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from data.collate import PAD_ID, box_pos_feat, pad_regions, pad_sequences
from utils.errors import DataError


def wrap_ids(ids: Sequence[int], cls_id: int, sep_id: int, max_len: int) -> list[int]:
    """``<s> ids </s>`` with at most ``max_len`` tokens in all (EOS kept last when truncating)."""
    if max_len < 3:
        raise ValueError(f"max_len: expected >= 3 (room for <s>, a token and </s>), got {max_len}")
    return [cls_id, *list(ids)[: max_len - 2], sep_id]


def text_tensor(rows: Sequence[Sequence[int]], pad_id: int = PAD_ID) -> torch.Tensor:
    """(B, max len) long, right-padded (padding follows </s>, so a causal tower ignores it)."""
    return pad_sequences([torch.tensor(r, dtype=torch.long) for r in rows], pad=pad_id)


def _db_name(txt_db) -> str:
    return str(getattr(txt_db, "db_dir", "txt_db"))


class ParallelText:
    """English-X sentence pairs from a paired txt_db (``input_ids_lang1/2``, ``lang1``/``lang2`` per example;
    prepro.py ``paired`` or ``parallel``). ``native_ids``, when stored, are the English side in the native
    model's own tokenizer and are used as they are.

    Attributes: ``native`` and ``foreign``: lists of wrapped id lists, aligned by index.
    """

    def __init__(self, txt_db, native_lang: str, lang: str, max_len: int):
        meta = txt_db.meta
        self.native, self.foreign = [], []
        for key in txt_db.ids:
            ex = txt_db[key]
            pair = (ex.get("lang1"), ex.get("lang2"))
            if pair != (native_lang, lang) or "input_ids_lang2" not in ex:
                raise DataError(f"{_db_name(txt_db)}, example {key!r}: expected a {native_lang}-{lang} pair "
                                f"(input_ids_lang1/2, lang1/lang2), got languages {pair}")
            if "native_ids" in ex:  # the native model's own tokenizer (CLIP BPE), specials included
                self.native.append(list(ex["native_ids"]))
            else:
                self.native.append(wrap_ids(ex["input_ids_lang1"], meta["CLS"], meta["SEP"], max_len))
            self.foreign.append(wrap_ids(ex["input_ids_lang2"], meta["CLS"], meta["SEP"], max_len))
        if not self.native:
            raise DataError(f"{_db_name(txt_db)}: no sentence pair")

    def __len__(self) -> int:
        return len(self.native)

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        return {"native_ids": text_tensor([self.native[i] for i in idx]),
                "input_ids": text_tensor([self.foreign[i] for i in idx])}


class ImageCaptions:
    """Captions of one language grouped by image, and the image db holding the regions.

    ``images``: sorted image names; ``captions[k]``: wrapped id lists of image k.
    """

    def __init__(self, txt_db, img_db, max_len: int):
        meta = txt_db.meta
        groups: dict[str, list[list[int]]] = {}
        for key in txt_db.ids:
            fname = txt_db.txt2img.get(key)
            if fname is None:
                raise DataError(f"{_db_name(txt_db)}/txt2img.json: caption {key!r} has no image")
            groups.setdefault(fname, []).append(wrap_ids(txt_db[key]["input_ids"], meta["CLS"], meta["SEP"], max_len))
        missing = [f for f in groups if f not in img_db.name2nbb]
        if missing:
            raise DataError(f"{getattr(img_db, 'db_dir', 'img_db')}: no image {missing[0]!r} (and "
                            f"{len(missing) - 1} more) referenced by {_db_name(txt_db)}")
        if not groups:
            raise DataError(f"{_db_name(txt_db)}: no caption")
        self.images = sorted(groups)
        self.captions = [groups[f] for f in self.images]
        self.img_db = img_db

    def __len__(self) -> int:
        return len(self.images)

    def image_batch(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        """Regions of images ``idx``: ``img_feat`` (B, N, D), ``img_pos_feat`` (B, N, 7), ``img_mask`` (B, N)."""
        feats, poss = [], []
        for k in idx:
            raw = self.img_db.get(self.images[k])
            feats.append(torch.from_numpy(np.asarray(raw["features"], dtype=np.float32)))
            poss.append(torch.from_numpy(box_pos_feat(raw["norm_bb"])))
        mask = pad_sequences([torch.ones(len(f), dtype=torch.bool) for f in feats], pad=False)
        return {"img_feat": pad_regions(feats), "img_pos_feat": pad_regions(poss), "img_mask": mask}

    def batch(self, idx: np.ndarray, rngs: Sequence[np.random.Generator]) -> dict[str, torch.Tensor]:
        """One caption per image of ``idx``, drawn with that image's own generator."""
        rows = [self.captions[k][int(rng.integers(len(self.captions[k])))] for k, rng in zip(idx, rngs)]
        return {"input_ids": text_tensor(rows), **self.image_batch(idx)}


class EpochBatches:
    """Deterministic batches of item indices: each epoch a permutation seeded by (seed, epoch), cut into
    global batches of ``batch_size * world_size`` (the last partial batch dropped), rank r taking its slice.

    The sequence depends only on (n, batch_size, seed, world_size), so resume restarts at any batch count.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.per_epoch = n // (batch_size * world_size)
        if self.per_epoch == 0:
            raise DataError(f"{n} items cannot fill one batch of {batch_size} x {world_size} ranks")

    def batches(self, start_batch: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """Infinite ``(epoch, idx (batch_size,))`` from batch number ``start_batch`` on."""
        step = self.batch_size * self.world_size
        epoch, k = divmod(start_batch, self.per_epoch)
        while True:
            order = np.random.default_rng((self.seed, epoch)).permutation(self.n)
            for b in range(k, self.per_epoch):
                start = b * step + self.rank * self.batch_size
                yield epoch, order[start:start + self.batch_size]
            epoch, k = epoch + 1, 0


def item_rngs(seed: int, epoch: int, idx: np.ndarray) -> list[np.random.Generator]:
    """One generator per item, seeded by (seed, epoch, index): the same draw on resume and on any rank."""
    return [np.random.default_rng((seed, epoch, int(i))) for i in idx]
