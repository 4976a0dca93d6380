"""Build what MMT/NMT fine-tuning and inference need from an :class:`training.mmt_config.MmtConfig`.

Model: ``arch`` "xlm" = the seed's model (``model.xlm``) from a VTLM-C / TLM checkpoint or random;
"uc2" = the UC2/XLM-R backbone from a UC2 checkpoint (or one of this project's UC2-backbone VTLM-C
runs), XLM-R weights or random. Either way the decoder is built from the same weights
(``init_dec_from_enc``) or random (the from-scratch recipe).
"""
from __future__ import annotations

from pathlib import Path

import torch

from tasks.translation import Degradation, TranslationObjective, TranslationSpec, TranslationTask
from utils.errors import ConfigError


def load_degradation(cfg) -> Degradation:
    """The :class:`Degradation` of a ``DegradeConfig`` (``words_file``: one word per line)."""
    words = {w.lower() for w in cfg.words}
    if cfg.words_file:
        path = Path(cfg.words_file)
        if not path.is_file():
            raise ConfigError(f"degrade.words_file: {path} does not exist")
        words |= {w.strip().lower() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()}
    if cfg.mode == "words" and not words:
        raise ConfigError("degrade.words: mode 'words' needs words (or a words_file)")
    return Degradation(cfg.mode, frozenset(words), cfg.keep_first)


def _xlm_model(cfg, tokenizer, img_db):
    from model.xlm import XlmModel, load_xlm_checkpoint, resolve_xlm_config

    config = resolve_xlm_config(cfg.model_config, vocab_size=tokenizer.vocab_size, pad_index=tokenizer.pad_id,
                                mask_index=tokenizer.mask_id, img_dim=img_db.feat_dim,
                                num_classes=img_db.label_dim, dropout=cfg.dropout)
    missing_langs = {cfg.src_lang, cfg.tgt_lang} - set(config.langs)
    if missing_langs:
        raise ConfigError(f"model_config {cfg.model_config}: langs {config.langs} lack {sorted(missing_langs)}")
    xlm = XlmModel(config)
    if cfg.init == "checkpoint":
        load_xlm_checkpoint(xlm, cfg.checkpoint)
    elif cfg.init == "xlmr":
        raise ConfigError("init 'xlmr' needs arch 'uc2' (XLM-R weights have the UC2 backbone's layout)")
    return xlm, config.to_dict()


def _uc2_model(cfg, img_db):
    from model.seq2seq import load_pretrained
    from training.setup import resolve_model_config

    config = resolve_model_config(cfg, img_db.feat_dim, img_db.label_dim, cfg.xlmr_dir)
    path = {"checkpoint": cfg.checkpoint, "xlmr": cfg.xlmr_dir, "random": None}[cfg.init]
    init = {"checkpoint": "uc2"}.get(cfg.init, cfg.init)
    return load_pretrained(config, init, path), config.to_dict()


def build_translation_model(cfg, tokenizer, img_db) -> tuple[torch.nn.Module, dict]:
    """The encoder-decoder of the run and the model config written beside it."""
    from model.seq2seq import SpecialIds, build_from_uc2
    from model.seq2seq_xlm import build_from_xlm

    torch.manual_seed(cfg.seed)
    special = SpecialIds(bos=tokenizer.cls_id, eos=tokenizer.sep_id, pad=tokenizer.pad_id)
    if cfg.arch == "xlm":
        xlm, config = _xlm_model(cfg, tokenizer, img_db)
        model = build_from_xlm(xlm, cfg.use_images, cfg.src_lang, cfg.tgt_lang, special, cfg.init_dec_from_enc)
    else:
        pretrained, config = _uc2_model(cfg, img_db)
        model = build_from_uc2(pretrained, cfg.use_images, special, cfg.init_dec_from_enc)
    return model, {"encoder": config, "arch": cfg.arch, "use_images": cfg.use_images, "tgt_lang": cfg.tgt_lang}


def translation_spec(cfg, image_of=None, degradation: Degradation | None = None) -> TranslationSpec:
    return TranslationSpec(cfg.src_lang, cfg.tgt_lang, cfg.use_images,
                           degradation if degradation is not None else load_degradation(cfg.degrade), image_of)


def search_config(cfg):
    from model.generation import SearchConfig

    return SearchConfig(beam_size=cfg.beam_size, length_penalty=cfg.length_penalty)


def open_source(db: str, img_db, max_txt_len: int | None = None):
    from tasks.base import ExampleSource
    from data.txt_db import TxtDb

    return ExampleSource([(TxtDb(db, max_txt_len=max_txt_len), img_db)])


def build_translation_task(cfg, tokenizer, img_db, rank: int = 0, world_size: int = 1, device="cpu",
                           spec: TranslationSpec | None = None, eval_db: str | None = None,
                           with_train: bool = True) -> TranslationTask:
    """The TrainTask: training split ``train_db`` (with_train and given), evaluation split ``eval_db`` or
    ``val_db``."""
    from data.sampler import OrderedBatchSampler, TokenBucketSampler
    from tasks.base import LoaderOptions, TaskDataset
    from tasks.build import task_seed

    objective = TranslationObjective(spec or translation_spec(cfg))
    seed = task_seed(cfg.seed, "mmt")
    options = LoaderOptions(cfg.n_workers, bool(cfg.pin_mem and torch.device(device).type == "cuda"), device)
    train = open_source(cfg.train_db, img_db, cfg.max_txt_len) if cfg.train_db and with_train else None
    train_sampler = (TokenBucketSampler(train.lens, cfg.train_batch_size, seed=seed, rank=rank,
                                        world_size=world_size) if train is not None else None)
    eval_db = eval_db or cfg.val_db
    val = open_source(eval_db, img_db) if eval_db else None
    val_sampler = (OrderedBatchSampler(val.lens, cfg.val_batch_size, seed=seed, rank=rank, world_size=world_size)
                   if val is not None else None)
    return TranslationTask("mmt" if cfg.use_images else "nmt", 1.0, objective,
                           TaskDataset(train, objective) if train is not None else None, train_sampler,
                           TaskDataset(val, objective) if val is not None else None, val_sampler, options,
                           decode=tokenizer.decode, search=search_config(cfg))


def with_spec(task: TranslationTask, spec: TranslationSpec) -> TranslationTask:
    """The same task and data with another spec (degradation, shuffled images) for probes."""
    from tasks.base import TaskDataset

    objective = TranslationObjective(spec)
    return TranslationTask(task.name, task.weight, objective, None, None, TaskDataset(task.val_data.source, objective),
                           task.val_sampler, task.options, decode=task.decode, search=task.search)
