"""What every pretraining objective shares: example source, dataset, masking of regions, the TrainTask.

An objective (one module per task, registered by name) is a subclass of :class:`Objective` with three
parts found together: ``build_example`` (the dataset side, all randomness from the draw seed's rng),
``collate`` and ``compute_loss``/``eval_stats``. :class:`PretrainTask` wraps an objective with its
train/val data and implements the trainer's TrainTask protocol (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data.collate import box_pos_feat, collate_backbone, img_mask_target, pad_sequences, xlmr_position_ids
from data.shared_table import SharedArray, StringTable
from utils.device import move_to_device
from utils.config import field
from utils.errors import ConfigError, DataError

NUM_SPECIALS = 2  # <s> and </s> around a caption


@dataclass
class TaskConfig:
    """Base of every task's nested config (``{"task": "mrtm", "mask_prob": 0.15}`` in a run config).

    Subclasses add the task's knobs as fields with a ``help``. ``LEGACY_KEYS`` maps a knob to the run-config
    key that supplies its default when the entry does not set it (same name when absent), which is how an
    original config's top-level ``mask_prob`` or ``itm_neg_prob`` still reaches the tasks.
    """

    LEGACY_KEYS: ClassVar[dict[str, str]] = {}
    task: str = field("", help="registered task name, e.g. 'mrtm'")


@dataclass
class MaskingConfig(TaskConfig):
    """Knobs of an objective that masks tokens, words or regions."""

    mask_prob: float = field(0.15, help="probability of masking a token / English word / region (orig. mrm_prob)")

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob <= 1.0:
            raise ConfigError(f"mask_prob: expected a probability in (0, 1], got {self.mask_prob}")


@dataclass(frozen=True)
class TextRecord:
    """One text example as read from its txt_db: ``fields`` is the stored dict, ``meta`` the db's meta."""

    part: int
    txt_id: str
    fields: dict
    meta: dict
    lang: str | None


class PartIndex:
    """One flat index over parts of the given sizes, concatenated in order (``what`` names an item)."""

    def __init__(self, sizes: Sequence[int], what: str):
        self._offsets = np.cumsum([0, *sizes])
        self.what = what

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(part, position within the part) of flat ``index``; IndexError outside."""
        if not 0 <= index < len(self):
            raise IndexError(f"{self.what} index {index} outside 0..{len(self) - 1}")
        part = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return part, index - int(self._offsets[part])


class ExampleSource:
    """The examples of one dataset: parts ``(TxtDb, ImgDb)`` concatenated under one flat index.

    ``lens`` (N,) holds each example's sequence length (text + 2 specials + regions), the sampler's input;
    it stays in the main process. What workers need per example (caption id, image) is kept in shared
    tables (data/shared_table.py): pickling a source for a worker sends file paths, not the tables.
    """

    def __init__(self, parts: Sequence[tuple[Any, Any]]):
        if not parts:
            raise DataError("a dataset needs at least one (txt_db, img_db) pair")
        self.parts = list(parts)
        tables = [self._example_tables(txt) for txt, _ in self.parts]
        self._ids = [t[0] for t in tables]     # caption ids of the kept examples
        self._images = [t[1] for t in tables]  # sorted distinct image names of each part
        self._img_of = [t[2] for t in tables]  # (n,) image index of each kept example
        self._index = PartIndex([len(ids) for ids in self._ids], "example")
        counts: list[np.ndarray] = []
        for k in range(len(self.parts)):
            counts.append(self._box_counts(k, counts))
        self.lens = np.concatenate([np.asarray(t[3], dtype=np.int64) + NUM_SPECIALS + counts[k][self._img_of[k].array]
                                    for k, t in enumerate(tables)]).astype(np.int64)
        if len(self) == 0:  # else the sampler fails later without naming the databases
            dbs = ", ".join(str(getattr(txt, "db_dir", "txt_db")) for txt, _ in self.parts)
            stored = sum(len(getattr(txt, "id2len", ())) for txt, _ in self.parts)
            raise DataError(f"{dbs}: no example to use ({stored} stored; training skips examples longer "
                            f"than max_txt_len)")

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "lens"}  # the sampler's input, main process only

    @staticmethod
    def _example_tables(txt) -> tuple[StringTable, StringTable, SharedArray, Sequence[int]]:
        """(kept ids, sorted distinct images, image index of each kept example, text lengths) of a txt db;
        every example needs an image. A reader may build them itself (``example_tables()``, e.g. with
        numpy for synthetic data)."""
        if hasattr(txt, "example_tables"):
            return txt.example_tables()
        names = [txt.txt2img.get(i) for i in txt.ids]
        if None in names:
            bad = txt.ids[names.index(None)]
            raise DataError(f"{getattr(txt, 'db_dir', 'txt_db')}/txt2img.json: example {bad!r} has no image; "
                            f"pretraining needs an img_fname for every example")
        distinct = sorted(set(names))
        column = {name: j for j, name in enumerate(distinct)}
        img_of = np.fromiter((column[n] for n in names), dtype=np.int32, count=len(names))
        return StringTable([str(i) for i in txt.ids]), StringTable(distinct, sorted_=True), SharedArray(img_of), txt.lens

    def _box_counts(self, k: int, earlier: list[np.ndarray]) -> np.ndarray:
        """(n_images,) boxes of part ``k``'s distinct images. Parts over the same img_db with the same
        images (one image set captioned in several languages) share one lookup (``earlier``: parts < k)."""
        txt, img = self.parts[k]
        for j in range(k):
            if self.parts[j][1] is img and self._images[j] == self._images[k]:
                return earlier[j]
        distinct = self._images[k].tolist()
        missing = [name for name in distinct if name not in img.name2nbb]
        if missing:
            raise DataError(f"{getattr(img, 'db_dir', 'img_db')}: no image {missing[0]!r} (and {len(missing) - 1} "
                            f"more) referenced by {getattr(txt, 'db_dir', 'txt_db')}/txt2img.json")
        return np.fromiter((img.name2nbb[name] for name in distinct), dtype=np.int64, count=len(distinct))

    def __len__(self) -> int:
        return len(self._index)

    def text(self, index: int) -> TextRecord:
        part, local = self._index.locate(index)
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
        return names[k + (k >= names.find(fname))]


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
    #: heads this objective trains: checkpoint key -> factory (model.heads), e.g. {"cls": mlm_head}
    heads: ClassVar[dict[str, Any]] = {}
    #: keys that eval_stats returns (the same on every rank, so they can be all-reduced)
    stat_keys: ClassVar[tuple[str, ...]] = ("loss", "n")

    def __init__(self, settings: TaskConfig):
        self.settings = settings

    def for_validation(self) -> "Objective":
        """The objective used on the validation split (the same one unless validation masks differently)."""
        return self

    def build_example(self, source: ExampleSource, index: int, rng: np.random.Generator) -> dict:
        """Un-collated example ``index``; every random choice comes from ``rng``."""
        raise NotImplementedError

    def collate(self, examples: list[dict]) -> dict:
        raise NotImplementedError

    def compute_loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """Scalar loss of one batch and its logs: floats or detached 0-d tensors (never ``.item()``: the
        trainer reads tensors once per log window, not once per micro-step)."""
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


#: imported once by the forkserver, so that each worker forks with them loaded instead of importing
#: torch again (seconds per worker, at every validation, where loaders are rebuilt)
WORKER_PRELOAD = ["torch", "numpy", "lmdb", "tasks.build", "tasks.retrieval", "tasks.vqa"]


def worker_context() -> multiprocessing.context.BaseContext:
    """Start method for loader workers: never plain fork.

    py-lmdb refuses to open a path "already open in this process", and a forked child inherits the
    parent's open-environment list (the builder opens the img_dbs to read their keys), so forked
    workers cannot read. A forkserver (or spawn) child starts clean; datasets pickle as paths and
    shared-table files (data/shared_table.py), and each worker opens its LMDB environments once.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_PRELOAD)  # takes effect when the server starts (first loader)
    return context


def make_loader(dataset: Dataset, batch_sampler: Any, collate: Callable[[list], dict],
                options: LoaderOptions) -> DataLoader:
    """The one DataLoader recipe of every task: ``batch_sampler`` yields lists of dataset keys,
    workers start by forkserver/spawn (:func:`worker_context`), and the loader has a private generator.

    A DataLoader iterator draws its worker base seed from the GLOBAL torch RNG unless it has its own
    generator. Train streams are (re)created lazily, at other steps in a resumed run, so that draw would
    shift the dropout masks after resume. Examples take all randomness from their draw seeds, so a fixed
    private generator changes no data.
    """
    context = worker_context() if options.num_workers > 0 else None
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate, num_workers=options.num_workers,
                      pin_memory=options.pin_memory, multiprocessing_context=context,
                      generator=torch.Generator().manual_seed(0))


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
        self.heads = dict(objective.heads)  # the heads this task trains (model built with them)

    def _loader(self, data: TaskDataset, batch_sampler) -> DataLoader:
        return make_loader(data, batch_sampler, data.objective.collate, self.options)

    def train_batches(self, start_batch: int = 0) -> Iterator[dict]:
        """Infinite, deterministic batches on the task's device, skipping the first ``start_batch``."""
        for batch in self._loader(self.train_data, _BatchesFrom(self.train_sampler, start_batch)):
            yield move_to_device(batch, self.options.device)

    def compute_loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
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
