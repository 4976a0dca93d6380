"""Build the pretraining TrainTasks of a run config: one per (dataset, task), weighted by mix_ratio."""
from __future__ import annotations

import zlib
from collections.abc import Callable

import torch

from data.labels import LabelVocab
from data.sampler import OrderedBatchSampler, TokenBucketSampler
from tasks.base import ExampleSource, LoaderOptions, ObjectiveSettings, PretrainTask, TaskDataset
from tasks.registry import canonical_task_name, get_task
from utils.errors import ConfigError


def task_seed(seed: int, task_name: str) -> int:
    """Per-task data seed, so two tasks on one dataset do not see the same order and masks."""
    return (int(seed) * 1_000_003 + zlib.crc32(task_name.encode("utf-8"))) % (2**63)


class _ImgDbCache:
    """Opens each img_db directory once and shares it across tasks (the original re-opened per task)."""

    def __init__(self, cfg, open_img_db: Callable):
        self._cfg = cfg
        self._open = open_img_db
        self._dbs: dict[str, object] = {}

    def __call__(self, path: str):
        if path not in self._dbs:
            c = self._cfg
            self._dbs[path] = self._open(path, c.conf_th, c.max_bb, c.min_bb, c.num_bb)
        return self._dbs[path]


def _source(spec, img_dbs: _ImgDbCache, open_txt_db: Callable, max_txt_len: int | None) -> ExampleSource:
    imgs = spec.img if len(spec.img) == len(spec.db) else spec.img * len(spec.db)
    return ExampleSource([(open_txt_db(db, max_txt_len=max_txt_len), img_dbs(img)) for db, img in zip(spec.db, imgs)])


def _canonical_tasks(specs, key: str) -> list[list[str]]:
    """Registered names of each spec's tasks; an unknown name is a ConfigError naming its key path."""
    out = []
    for i, spec in enumerate(specs):
        names = []
        for j, task in enumerate(spec.tasks):
            try:
                names.append(canonical_task_name(task))
            except KeyError as err:
                raise ConfigError(f"{key}[{i}].tasks[{j}]: {err.args[0]}") from None
        out.append(names)
    return out


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


def _label_vocab(cfg, tokenizer, mrtm_sources: list[ExampleSource]) -> LabelVocab | None:
    if not mrtm_sources:
        return None
    if not cfg.label_dir:
        raise ConfigError("label_dir: required by the MRTM task (objects_vocab_<lang>.txt files)")
    langs = [lang for source in mrtm_sources for lang in _source_langs(source)]
    txt, img = mrtm_sources[0].parts[0]
    num_classes = getattr(img, "label_dim", None)
    if not num_classes:
        raise ConfigError(f"{getattr(img, 'db_dir', 'img_db')}: MRTM needs detector soft labels, none stored")
    return LabelVocab.load(cfg.label_dir, langs, num_classes, tokenizer)


def _val_source(cfg, name: str, task: str, val_tasks, img_dbs, open_txt_db) -> ExampleSource | None:
    for spec, tasks in zip(cfg.val_datasets, val_tasks):
        if spec.name == name and task in tasks:
            return _source(spec, img_dbs, open_txt_db, None)
    return None


def build_pretrain_tasks(cfg, tokenizer, rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                         open_txt_db: Callable | None = None, open_img_db: Callable | None = None
                         ) -> list[PretrainTask]:
    """One :class:`PretrainTask` per (train dataset, task) of a ``PretrainConfig``.

    ``open_txt_db(path, max_txt_len=...)`` / ``open_img_db(path, conf_th, max_bb, min_bb, num_bb)`` default
    to :class:`data.txt_db.TxtDb` / :class:`data.img_db.ImgDb` (tests pass in-memory stand-ins).
    Validation uses the val dataset of the same name that lists the same task.
    """
    if open_txt_db is None:
        from data.txt_db import TxtDb as open_txt_db
    if open_img_db is None:
        from data.img_db import ImgDb as open_img_db
    device = torch.device(device)
    img_dbs = _ImgDbCache(cfg, open_img_db)
    train_tasks = _canonical_tasks(cfg.train_datasets, "train_datasets")
    val_tasks = _canonical_tasks(cfg.val_datasets, "val_datasets")
    sources = [_source(spec, img_dbs, open_txt_db, cfg.max_txt_len) for spec in cfg.train_datasets]
    mrtm_sources = [s for s, tasks in zip(sources, train_tasks) if "mrtm" in tasks]
    settings = ObjectiveSettings(cfg.mask_prob, cfg.itm_neg_prob, cfg.vtlm_mask_mode,
                                 _label_vocab(cfg, tokenizer, mrtm_sources))
    options = LoaderOptions(cfg.n_workers, bool(cfg.pin_mem and device.type == "cuda"), device)
    built = []
    for spec, source, tasks in zip(cfg.train_datasets, sources, train_tasks):
        ratios = spec.mix_ratio or [1.0] * len(tasks)
        for task, ratio in zip(tasks, ratios):
            name = f"{task}_{spec.name}"
            seed = task_seed(cfg.seed, name)
            objective = get_task(task)(settings)
            train_sampler = TokenBucketSampler(source.lens, cfg.train_batch_size, seed=seed, rank=rank,
                                               world_size=world_size)
            val = _val_source(cfg, spec.name, task, val_tasks, img_dbs, open_txt_db)
            val_data = TaskDataset(val, objective.for_validation()) if val is not None else None
            val_sampler = (OrderedBatchSampler(val.lens, cfg.val_batch_size, seed=seed, rank=rank,
                                               world_size=world_size) if val is not None else None)
            built.append(PretrainTask(name, ratio, objective, TaskDataset(source, objective), train_sampler,
                                      val_data, val_sampler, options))
    return built
