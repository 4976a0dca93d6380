"""What every pretraining objective shares: example source, dataset, masking of regions, the TrainTask.

An objective (one module per task, registered by name) is a subclass of :class:`Objective` with three
parts found together: ``build_example`` (the dataset side, all randomness from the draw seed's rng),
``collate`` and ``compute_loss``/``eval_stats``. :class:`PretrainTask` wraps an objective with its
train/val data and implements the trainer's TrainTask protocol (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data.collate import box_pos_feat, collate_backbone, img_mask_target, pad_sequences, xlmr_position_ids
from utils.device import move_to_device
from utils.errors import DataError

NUM_SPECIALS = 2  # <s> and </s> around a caption


@dataclass(frozen=True)
class ObjectiveSettings:
    """Knobs of the objectives (from the run config).

    Attributes:
        mask_prob: probability of masking a token / English word / region.
        itm_neg_prob: probability that ITM swaps in another image.
        vtlm_mask_mode: "mix" (50 % co-masked, 50 % independent, the original default) or "full".
        label_vocab: class words per language (data.labels.LabelVocab), needed by MRTM only.
    """

    mask_prob: float = 0.15
    itm_neg_prob: float = 0.5
    vtlm_mask_mode: str = "mix"
    label_vocab: Any = None


@dataclass(frozen=True)
class TextRecord:
    """One text example as read from its txt_db: ``fields`` is the stored dict, ``meta`` the db's meta."""

    part: int
    txt_id: str
    fields: dict
    meta: dict
    lang: str | None


class ExampleSource:
    """The examples of one dataset: parts ``(TxtDb, ImgDb)`` concatenated under one flat index.

    ``lens`` (N,) holds each example's sequence length (text + 2 specials + regions), the sampler's input.
    """

    def __init__(self, parts: Sequence[tuple[Any, Any]]):
        if not parts:
            raise DataError("a dataset needs at least one (txt_db, img_db) pair")
        self.parts = list(parts)
        self._ids: list[list[str]] = [list(txt.ids) for txt, _ in self.parts]
        self._offsets = np.cumsum([0] + [len(ids) for ids in self._ids])
        self._images = [self._image_names(k) for k in range(len(self.parts))]
        self._image_pos = [{name: k for k, name in enumerate(names)} for names in self._images]
        self.lens = np.concatenate([self._part_lens(k) for k in range(len(self.parts))]).astype(np.int64)
        if len(self) == 0:  # else the sampler fails later without naming the databases
            dbs = ", ".join(str(getattr(txt, "db_dir", "txt_db")) for txt, _ in self.parts)
            stored = sum(len(getattr(txt, "id2len", ())) for txt, _ in self.parts)
            raise DataError(f"{dbs}: no example to use ({stored} stored; training skips examples longer "
                            f"than max_txt_len)")

    def _image_names(self, k: int) -> list[str]:
        """Sorted distinct images of part ``k``'s kept examples; every example must have one."""
        txt = self.parts[k][0]
        names = [txt.txt2img.get(i) for i in self._ids[k]]
        if None in names:
            bad = self._ids[k][names.index(None)]
            raise DataError(f"{getattr(txt, 'db_dir', 'txt_db')}/txt2img.json: example {bad!r} has no image; "
                            f"pretraining needs an img_fname for every example")
        return sorted(set(names))

    def _part_lens(self, k: int) -> np.ndarray:
        txt, img = self.parts[k]
        missing = [name for name in self._images[k] if name not in img.name2nbb]
        if missing:
            raise DataError(f"{getattr(img, 'db_dir', 'img_db')}: no image {missing[0]!r} (and {len(missing) - 1} "
                            f"more) referenced by {getattr(txt, 'db_dir', 'txt_db')}/txt2img.json")
        txt_lens = np.asarray(txt.lens, dtype=np.int64)
        nbbs = np.array([img.name2nbb[txt.txt2img[i]] for i in self._ids[k]], dtype=np.int64)
        return txt_lens + NUM_SPECIALS + nbbs

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"example index {index} outside 0..{len(self) - 1}")
        part = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return part, index - int(self._offsets[part])

    def text(self, index: int) -> TextRecord:
        part, local = self._locate(index)
        txt = self.parts[part][0]
        txt_id = self._ids[part][local]
        fields = txt[txt_id]
        lang = fields.get("lang") or txt.meta.get("lang")
        return TextRecord(part, txt_id, fields, txt.meta, lang)

    def image(self, part: int, fname: str) -> dict[str, torch.Tensor]:
        """Regions of image ``fname``: ``img_feat`` (n, D), ``img_pos_feat`` (n, 7), ``soft_labels`` (n, C).

        ``soft_labels`` is absent when the img_db stores none; the objectives that need it say so.
        """
        raw = self.parts[part][1].get(fname)
        image = {"img_feat": torch.from_numpy(np.asarray(raw["features"], dtype=np.float32)),
                 "img_pos_feat": torch.from_numpy(box_pos_feat(raw["norm_bb"]))}
        if raw.get("soft_labels") is not None:
            image["soft_labels"] = torch.from_numpy(np.asarray(raw["soft_labels"], dtype=np.float32))
        return image

    def other_image(self, part: int, fname: str, rng: np.random.Generator) -> str:
        """A uniformly drawn image of the same part that is not ``fname`` (ITM negatives)."""
        names = self._images[part]
        if len(names) < 2:
            raise DataError(f"{getattr(self.parts[part][0], 'db_dir', 'txt_db')}: ITM needs at least two "
                            f"images to draw a negative, found {len(names)}")
        # Draw among the n - 1 others by skipping over the true image's slot.
        k = int(rng.integers(len(names) - 1))
        return names[k + (k >= self._image_pos[part][fname])]


def wrap_text(ids: Sequence[int], meta: dict) -> torch.Tensor:
    """``<s> ids </s>`` as a (len + 2,) long tensor, CLS/SEP from the txt_db meta."""
    return torch.tensor([meta["CLS"], *ids, meta["SEP"]], dtype=torch.long)


def mask_regions(num_bb: int, mask_prob: float, rng: np.random.Generator) -> torch.Tensor:
    """(num_bb,) bool: each region masked with ``mask_prob``, at least one."""
    mask = rng.random(num_bb) < mask_prob
    if not mask.any():
        mask[rng.integers(num_bb)] = True
    return torch.from_numpy(mask)


def text_example(input_ids: torch.Tensor, image: dict, restart_at: int | None = None) -> dict:
    """The backbone part of an un-collated example (see data.collate)."""
    return {
        "input_ids": input_ids,
        "position_ids": xlmr_position_ids(len(input_ids), restart_at),
        "img_feat": image["img_feat"],
        "img_pos_feat": image["img_pos_feat"],
    }


class Objective:
    """One pretraining objective. Subclasses are registered with ``@register_task(name)``."""

    name: ClassVar[str] = "?"
    #: keys that eval_stats returns (the same on every rank, so they can be all-reduced)
    stat_keys: ClassVar[tuple[str, ...]] = ("loss", "n")

    def __init__(self, settings: ObjectiveSettings):
        self.settings = settings

    def for_validation(self) -> "Objective":
        """The objective used on the validation split (the same one unless validation masks differently)."""
        return self

    def build_example(self, source: ExampleSource, index: int, rng: np.random.Generator) -> dict:
        """Un-collated example ``index``; every random choice comes from ``rng``."""
        raise NotImplementedError

    def collate(self, examples: list[dict]) -> dict:
        raise NotImplementedError

    def compute_loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss of one batch and float logs."""
        raise NotImplementedError

    def eval_stats(self, model, batch: dict) -> dict[str, float]:
        """Sums over one validation batch: ``loss`` (summed), ``n`` (targets) and e.g. ``correct``."""
        raise NotImplementedError

    @staticmethod
    def finalize(sums: dict[str, float]) -> dict[str, float]:
        """Metrics from summed stats: mean loss, and accuracy where ``correct`` was counted."""
        n = max(sums.get("n", 0.0), 1.0)
        metrics = {"loss": sums.get("loss", 0.0) / n}
        if "correct" in sums:
            metrics["acc"] = sums["correct"] / n
        return metrics


def run_backbone(model, batch: dict, img_masks: torch.Tensor | None = None) -> torch.Tensor:
    """Hidden states (B, L, H) of the packed sequences."""
    return model.roberta(batch["input_ids"], batch["position_ids"], batch["img_feat"], batch["img_pos_feat"],
                         batch["attn_masks"], batch["gather_index"], img_masks=img_masks)


class TaskDataset(Dataset):
    """Map-style dataset keyed by the sampler's ``(index, draw_seed)`` pairs."""

    def __init__(self, source: ExampleSource, objective: Objective):
        self.source = source
        self.objective = objective

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, draw_seed = key
        return self.objective.build_example(self.source, int(index), np.random.default_rng(int(draw_seed)))


class _BatchesFrom:
    """Iterable batch sampler starting at ``start_batch`` (DataLoader calls ``iter`` once)."""

    def __init__(self, sampler, start_batch: int):
        self.sampler = sampler
        self.start_batch = start_batch

    def __iter__(self):
        return self.sampler.batches(self.start_batch)


@dataclass
class LoaderOptions:
    """DataLoader settings shared by a run's tasks."""

    num_workers: int = 0
    pin_memory: bool = False
    device: str | torch.device = "cpu"


def worker_context() -> str:
    """Start method for loader workers: never plain fork.

    py-lmdb refuses to open a path "already open in this process", and a forked child inherits the
    parent's open-environment list (the builder opens the img_dbs to read their keys), so forked
    workers cannot read. A forkserver (or spawn) child starts clean; TxtDb/ImgDb pickle as paths.
    """
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class PretrainTask:
    """A TrainTask: one objective on one dataset, with its mix weight and validation split."""

    def __init__(self, name: str, weight: float, objective: Objective, train_data: TaskDataset, train_sampler,
                 val_data: TaskDataset | None = None, val_sampler=None, options: LoaderOptions | None = None):
        self.name = name
        self.weight = float(weight)
        self.objective = objective
        self.train_data, self.train_sampler = train_data, train_sampler
        self.val_data, self.val_sampler = val_data, val_sampler
        self.options = options or LoaderOptions()

    def _loader(self, data: TaskDataset, batch_sampler) -> DataLoader:
        opts = self.options
        context = worker_context() if opts.num_workers > 0 else None
        # A DataLoader iterator draws its worker base seed from the GLOBAL torch RNG unless it has its own
        # generator. Train streams are (re)created lazily, at other steps in a resumed run, so that draw
        # would shift the dropout masks after resume. Examples take all randomness from their draw seeds,
        # so a fixed private generator changes no data.
        return DataLoader(data, batch_sampler=batch_sampler, collate_fn=data.objective.collate,
                          num_workers=opts.num_workers, pin_memory=opts.pin_memory,
                          multiprocessing_context=context, generator=torch.Generator().manual_seed(0))

    def train_batches(self, start_batch: int = 0) -> Iterator[dict]:
        """Infinite, deterministic batches on the task's device, skipping the first ``start_batch``."""
        for batch in self._loader(self.train_data, _BatchesFrom(self.train_sampler, start_batch)):
            yield move_to_device(batch, self.options.device)

    def compute_loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        return self.objective.compute_loss(model, batch)

    @torch.no_grad()
    def validate(self, model) -> dict[str, float]:
        """Metrics on the validation split, summed over ranks before averaging; {} without one."""
        if self.val_data is None:
            return {}
        was_training = model.training
        model.eval()
        sums = dict.fromkeys(self.objective.stat_keys, 0.0)
        for batch in self._loader(self.val_data, self.val_sampler):
            for key, value in self.val_data.objective.eval_stats(model, move_to_device(batch, self.options.device)).items():
                sums[key] += float(value)
        model.train(was_training)
        return self.objective.finalize(_all_reduce_sums(sums, self.options.device))


def _all_reduce_sums(sums: dict[str, float], device) -> dict[str, float]:
    """Sum the stats over ranks (torch.distributed or horovod; a no-op on one process).

    Every rank holds the same keys (Objective.stat_keys), reduced in sorted order.
    """
    from utils.distributed import all_reduce_sum_

    keys = sorted(sums)
    values = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
    return dict(zip(keys, all_reduce_sum_(values).tolist()))


class RegionMaskObjective(Objective):
    """Shared part of MRTM, MRC and MRFR: text unmasked, regions masked with p = mask_prob (>= 1).

    Examples add ``img_masks`` (n,) bool and keep ``soft_labels`` (n, C); the collate adds
    ``img_masks`` (B, Ni) bool and ``img_mask_tgt`` (B, L) bool, then :meth:`add_targets` the
    objective's own targets for the masked regions (in the row-major order of ``img_mask_tgt``).
    """

    needs_soft_labels: ClassVar[bool] = True

    def build_example(self, source: ExampleSource, index: int, rng: np.random.Generator) -> dict:
        record = source.text(index)
        image = source.image(record.part, record.fields["img_fname"])
        example = text_example(wrap_text(record.fields["input_ids"], record.meta), image)
        example["img_masks"] = mask_regions(len(image["img_feat"]), self.settings.mask_prob, rng)
        if self.needs_soft_labels and "soft_labels" not in image:
            raise DataError(f"{getattr(source.parts[record.part][1], 'db_dir', 'img_db')}, image "
                            f"{record.fields['img_fname']!r}: no soft_labels stored; {self.name} needs them")
        if "soft_labels" in image:
            example["soft_labels"] = image["soft_labels"]
        self.add_example_targets(example, record, rng)
        return example

    def add_example_targets(self, example: dict, record: TextRecord, rng: np.random.Generator) -> None:
        """Hook for per-example targets that need the text record or randomness (MRTM)."""

    def collate(self, examples: list[dict]) -> dict:
        batch = collate_backbone(examples)
        img_masks = [ex["img_masks"] for ex in examples]
        batch["img_masks"] = pad_sequences(img_masks, pad=False)  # (B, Ni)
        batch["img_mask_tgt"] = img_mask_target(img_masks, batch["txt_lens"], batch["attn_masks"].size(1))
        self.add_targets(batch, examples)
        return batch

    def add_targets(self, batch: dict, examples: list[dict]) -> None:
        raise NotImplementedError

    def masked_hidden(self, model, batch: dict) -> torch.Tensor:
        """Hidden states (n_masked, H) of the masked regions."""
        hidden = run_backbone(model, batch, img_masks=batch["img_masks"])  # (B, L, H)
        return hidden[batch["img_mask_tgt"]]
