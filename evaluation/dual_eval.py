"""Retrieval with a dual encoder through the project's one evaluation path.

A dual encoder scores a test set as a cosine matrix (n_txt, n_img) in one pass per side; everything after
the scores is the cross-encoder's code: :func:`evaluation.itm_eval.set_metrics` (the same Recall@K / AR, standard
"any correct caption" image->text ranking), the same score files and the same tables with the same
per-language mean (:func:`evaluation.itm_eval.write_results`). So MLA's AR sits beside UC2's row for row.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from data.collate import pad_regions, pad_sequences
from data.mla_data import text_tensor, wrap_ids
from evaluation.itm_eval import CLS_ID, SEP_ID, RetrievalSet, measure_sets


def _device(model: torch.nn.Module) -> torch.device:
    return next(iter(model.parameters())).device


@torch.no_grad()
def text_features(model, dataset: RetrievalSet, lang: str, max_len: int, batch: int = 256) -> torch.Tensor:
    """(n_txt, E) L2-normalised features of every caption (``<s> ids </s>``, EOS kept within ``max_len``)."""
    rows = [wrap_ids(t.tolist(), CLS_ID, SEP_ID, max_len) for t in dataset.txt_tokens]
    out = []
    for i in range(0, len(rows), batch):
        ids = text_tensor(rows[i:i + batch]).to(_device(model))
        out.append(model.encode_text(ids, lang).float())
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def image_features(model, dataset: RetrievalSet, batch: int = 256) -> torch.Tensor:
    """(n_img, E) L2-normalised features of every image (regions padded per batch, masked)."""
    out = []
    for i in range(0, len(dataset.img_fnames), batch):
        arrays = [dataset.load_image(f) for f in dataset.img_fnames[i:i + batch]]
        feat = pad_regions([torch.from_numpy(a) for a, _ in arrays])
        pos = pad_regions([torch.from_numpy(p) for _, p in arrays])
        mask = pad_sequences([torch.ones(len(a), dtype=torch.bool) for a, _ in arrays], pad=False)
        dev = _device(model)
        out.append(model.encode_image(feat.to(dev), pos.to(dev), mask.to(dev)).float())
    return F.normalize(torch.cat(out), dim=-1)


def dual_scores(model, dataset: RetrievalSet, lang: str, max_len: int) -> np.ndarray:
    """(n_txt, n_img) float32 cosine similarities; the model is put in eval mode for the pass."""
    was_training = model.training
    model.eval()
    try:
        scores = text_features(model, dataset, lang, max_len) @ image_features(model, dataset).t()
    finally:
        model.train(was_training)
    return scores.cpu().numpy()


def evaluate_dual_sets(model, specs: Sequence[Any], setting: str, open_set: Callable[[Any], RetrievalSet],
                       max_len: int, out_dir: Path | None = None, save: bool = True) -> list[dict[str, Any]]:
    """Like :func:`evaluation.itm_eval.evaluate_sets`, with dual-encoder scores; each spec's ``lang`` routes the text.

    Returns ``[{"setting", "dataset", "lang", "name", "metrics"}, ...]`` for :func:`evaluation.itm_eval.write_results`.
    """
    return measure_sets(specs, setting, open_set, lambda spec, dataset: dual_scores(model, dataset, spec.lang, max_len),
                        out_dir, save)


def evaluate_run(cfg, model) -> str:
    """Evaluate ``model`` on a run config's ``test_datasets`` (``setting``, ``results_dir``/``output_dir``,
    box rule, ``max_txt_len``) with the project's metrics and tables; returns the Markdown."""
    from evaluation.itm_eval import open_retrieval_set, write_results

    rule = {k: getattr(cfg, k) for k in ("conf_th", "max_bb", "min_bb", "num_bb")}
    out_dir = Path(cfg.results_dir or Path(cfg.output_dir) / "results")
    results = evaluate_dual_sets(model, cfg.test_datasets, cfg.setting,
                                 lambda spec: open_retrieval_set(spec, rule), cfg.max_txt_len, out_dir)
    return write_results(out_dir, results)
