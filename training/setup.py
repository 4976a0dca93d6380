"""Shared start-up steps of the entry points: distributed init, seeding, model config and initial weights.

Every script (pretraining, retrieval and VQA fine-tuning) builds its model the same way, so the rules live
here once: the model shape comes from ``model_config`` (or the XLM-R folder's ``config.json``), the image
feature and detector-label widths come from the data, dropout from the run config.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from model.config import UC2ModelConfig
from utils import distributed as du
from utils.errors import ConfigError

logger = logging.getLogger(__name__)


def start_run(cfg) -> du.DistInfo:
    """Join the distributed job (if any) and seed torch identically on every rank."""
    info = du.init_distributed(timeout_s=cfg.dist_timeout_s)
    torch.manual_seed(cfg.seed)
    return info


def resolve_model_config(cfg, feat_dim: int, label_dim: int | None, xlmr_dir: str = "") -> UC2ModelConfig:
    """The model shape for this run.

    ``cfg.model_config`` wins; otherwise ``{xlmr_dir}/config.json``; otherwise the XLM-R base shape.
    ``img_dim``/``img_label_dim`` are taken from the image database (2048/1601 for BUTD features) and the
    dropout probabilities from ``cfg.dropout``.
    """
    if cfg.model_config:
        base = UC2ModelConfig.from_json(cfg.model_config)
    elif xlmr_dir:
        base = UC2ModelConfig.from_json(Path(xlmr_dir) / "config.json")
    else:
        base = UC2ModelConfig.xlmr_base()
    values = base.to_dict()
    if values.get("img_dim") != feat_dim:
        logger.info("model img_dim %s -> %d (feature width of the image database)", values.get("img_dim"), feat_dim)
    values.update(img_dim=feat_dim, hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout)
    if label_dim:
        values["img_label_dim"] = label_dim
    return UC2ModelConfig.from_dict(values, source=cfg.model_config or "model config")


def init_weights(model: nn.Module, cfg, xlmr_dir: str = "", partial: tuple[str, ...] = ()) -> None:
    """Initial weights: a UC2 checkpoint (``cfg.checkpoint``) if given, else a Hugging Face XLM-R folder,
    else the fresh initialisation; then each file in ``partial`` (e.g. an Early Adaptation result)."""
    from model.weights import init_from_xlmr, load_uc2_checkpoint  # local: keeps script start-up light

    if cfg.checkpoint:
        load_uc2_checkpoint(model, cfg.checkpoint)
    elif xlmr_dir:
        init_from_xlmr(model, xlmr_dir)  # logs what it loaded
    else:
        logger.warning("no checkpoint and no XLM-R folder given: training from a random initialisation")
    for path in partial:
        if not Path(path).is_file():
            raise ConfigError(f"initial weights file {path} does not exist")
        load_uc2_checkpoint(model, path, allow_partial=True)


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's ``main``: set up logging, and turn the project's own errors (bad config, data,
    checkpoint or a failed rank — each message names the file/key) into one ``error: ...`` line and exit
    status 1 instead of a traceback. Programming errors still show their traceback."""
    from utils.errors import CheckpointError
    from utils.errors import DistributedError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        main()
    except (ValueError, FileNotFoundError, CheckpointError, DistributedError) as err:
        sys.exit(f"error: {err}")
