"""UC2 pretraining as a run: the TrainTasks of a ``PretrainConfig`` (one per dataset and listed objective,
weighted by ``mix_ratio``), the pretraining model, and the ``pretrain`` run spec (``train.py --task pretrain``,
the ``pretrain.py`` shim)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from model.model import UC2ForPretraining
from model.xlm import is_xlm_config_file
from tasks.context import DatasetBinding, TaskContext, run_context
from tasks.registry import PRETRAIN, RunSpec, TaskSpec, known_head_names, register_run, resolve_task_config
from training.run_config import PretrainConfig
from training.setup import init_weights, resolve_model_config
from utils import distributed as du
from utils.errors import ConfigError


def _entries(cfg: Any, key: str) -> list[list[tuple[TaskSpec, Any]]]:
    """Spec and typed config of every ``tasks`` entry of ``cfg.<key>``; errors name the key path."""
    return [[resolve_task_config(entry, cfg, f"{key}[{i}].tasks[{j}]", PRETRAIN) for j, entry in enumerate(spec.tasks)]
            for i, spec in enumerate(getattr(cfg, key))]


def _val_source(ctx: TaskContext, name: str, task: str, val_entries) -> Any:
    """Validation examples: the val dataset of the same name that lists the same task, else None."""
    for spec, entries in zip(ctx.run.val_datasets, val_entries):
        if spec.name == name and task in [s.name for s, _ in entries]:
            return ctx.source(spec.db, spec.img, None)
    return None


def build_pretrain_tasks(cfg: Any, tokenizer: Any = None, rank: int = 0, world_size: int = 1,
                         device: str | torch.device = "cpu", open_txt_db: Callable | None = None,
                         open_img_db: Callable | None = None, ctx: TaskContext | None = None) -> list:
    """One TrainTask per (train dataset, listed task) of a ``PretrainConfig``, built by the task's own
    builder with a :class:`TaskContext` bound to that dataset.

    ``open_txt_db(path, max_txt_len=...)`` / ``open_img_db(path, conf_th, max_bb, min_bb, num_bb)`` default
    to :class:`data.txt_db.TxtDb` / :class:`data.img_db.ImgDb` (tests pass in-memory stand-ins).
    Validation uses the val dataset of the same name that lists the same task.
    """
    ctx = ctx or run_context(cfg, tokenizer, rank, world_size, device, open_txt_db, open_img_db)
    train_entries, val_entries = _entries(cfg, "train_datasets"), _entries(cfg, "val_datasets")
    sources = [ctx.source(spec.db, spec.img, cfg.max_txt_len) for spec in cfg.train_datasets]
    for source, entries in zip(sources, train_entries):
        for spec, _ in entries:
            ctx.sources_of.setdefault(spec.name, []).append(source)
    built = []
    for spec, source, entries in zip(cfg.train_datasets, sources, train_entries):
        ratios = spec.mix_ratio or [1.0] * len(entries)
        for (task, task_cfg), ratio in zip(entries, ratios):
            val = _val_source(ctx, spec.name, task.name, val_entries)
            built.append(task.build(task_cfg, ctx.for_dataset(DatasetBinding(spec.name, ratio, source, val))))
    return built


def declared_heads(tasks: list) -> dict[str, Any]:
    """Head factories declared by the built tasks (checkpoint key -> factory)."""
    return {name: factory for task in tasks for name, factory in getattr(task, "heads", {}).items()}


def build_pretrain_model(cfg: Any, ctx: TaskContext, tasks: list) -> tuple[UC2ForPretraining, dict]:
    """The released pretraining heads plus any other head the run's tasks declare, shaped by the run's
    model config and the first training image db, initialised from checkpoint / XLM-R / Early Adaptation."""
    first_img = ctx.img_db(cfg.train_datasets[0].img[0])
    if cfg.model_config and is_xlm_config_file(cfg.model_config):  # the MMT seed's model (VTLM-C, TLM)
        return build_xlm_pretrain_model(cfg, ctx, first_img)
    model_config = resolve_model_config(cfg, first_img.feat_dim, first_img.label_dim, cfg.xlmr_dir)
    if ctx.tokenizer is not None and model_config.vocab_size != ctx.tokenizer.vocab_size:
        raise ConfigError(f"model vocab_size {model_config.vocab_size} != tokenizer {ctx.tokenizer.path} "
                          f"vocabulary {ctx.tokenizer.vocab_size}")
    heads = declared_heads(tasks)
    model = UC2ForPretraining(model_config, extra_heads=heads, fresh=heads)
    ea = cfg.early_adaptation
    if ea is not None and ea.num_train_steps > 0 and not ea.init_from:
        raise ConfigError("early_adaptation: train it with scripts/early_adaptation.py, then set "
                          "early_adaptation.init_from to its output")
    init_weights(model, cfg, cfg.xlmr_dir, partial=(ea.init_from,) if ea is not None and ea.init_from else (),
                 known_heads=known_head_names())
    return model, model_config.to_dict()


def build_xlm_pretrain_model(cfg: Any, ctx: TaskContext, first_img: Any) -> tuple[Any, dict]:
    """The seed's XLM-style model (model/xlm.py) of an ``"architecture": "xlm"`` model config, sized by the
    tokenizer and the first image db, from ``cfg.checkpoint`` when given (tasks ``vtlmc``/``tlmc``)."""
    from model.xlm import XlmModel, load_xlm_checkpoint, resolve_xlm_config

    tok = ctx.tokenizer
    model_config = resolve_xlm_config(cfg.model_config, vocab_size=tok.vocab_size, pad_index=tok.pad_id,
                                      mask_index=tok.mask_id, img_dim=first_img.feat_dim,
                                      num_classes=first_img.label_dim, dropout=cfg.dropout)
    model = XlmModel(model_config)
    if cfg.checkpoint:
        load_xlm_checkpoint(model, cfg.checkpoint)
    return model, model_config.to_dict()


def pretrain_context(cfg: Any, info: Any, device: torch.device) -> TaskContext:
    """The run's context with the tokenizer loaded (``tokenizer``, else the XLM-R folder's)."""
    from data.tokenizer import load_tokenizer

    if not cfg.train_datasets:
        raise ConfigError("train_datasets: expected at least one training source")
    return run_context(cfg, load_tokenizer(cfg.tokenizer or cfg.xlmr_dir), info.rank, info.world_size, device)


def save_final(cfg: Any, trainer: Any, ctx: TaskContext, metrics: dict) -> Path:
    """Write ``model_final.pt`` (UC2 key names, or the seed's for an XLM-style model; rank 0) and return its path."""
    from model.weights import save_uc2_checkpoint
    from model.xlm import XlmModel, save_xlm_checkpoint

    final = Path(cfg.output_dir) / "model_final.pt"
    if du.is_main():
        save = save_xlm_checkpoint if isinstance(trainer.model, XlmModel) else save_uc2_checkpoint
        save(trainer.model, final)
    du.barrier()
    return final


PRETRAIN_RUN = register_run(RunSpec(
    name="pretrain", config=PretrainConfig, build_tasks=lambda cfg, ctx: build_pretrain_tasks(cfg, ctx=ctx),
    build_model=build_pretrain_model, finish=save_final, make_context=pretrain_context))
