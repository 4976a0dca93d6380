"""Fast retrieval: a dual-encoder shortlist, then the UC2 cross-encoder on the shortlisted pairs only.

Exhaustive scoring (evaluation/itm_eval.py) runs the cross-encoder on all ``n_txt * n_img`` pairs. Here:

1. the ``itc`` head (model/itc.py) embeds every caption once (text-only pass) and every image once
   (image-only pass): ``n_txt + n_img`` single-modality passes;
2. exact k-NN on the cosine similarities (:func:`knn`: a chunked matrix product and a stable sort; faiss
   as an optional backend for large galleries): each caption keeps its ``k_img`` best images, each image
   its ``k_txt`` best captions (within the query's fold for COCO 1K, as the exhaustive metrics read only
   within-fold blocks);
3. the cross-encoder scores the union of those pairs (:func:`score_pairs`), in the exhaustive path's
   caption blocks and image blocks, so with k = N every batch is the exhaustive one and every score is
   bit-identical;
4. two score matrices are filled: text->image (each caption row holds its k_img scores) and image->text
   (each image column holds its k_txt scores); every pair not shortlisted for that query is put below
   the query's lowest reranked score, ordered by the dual encoder's similarity (:func:`tiered`; with
   ``below_shortlist: tied``, all at :data:`UNSCORED`). The positive gets no free pass: outside the shortlist it ranks
   below all k, and ties count against it (evaluation/retrieval_metrics.py). Only R@K with K > k can
   still find it, through the dual encoder's order: exactly as a dual-encoder-only ranking would.

Metrics (``retrieval_recalls(..., i2t_scores=...)``, folds as in the exhaustive path) are reported with
the dual encoder's own AR, the shortlist's recall of the positive at k, the number of pairs scored and
the wall time of each stage.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from evaluation.itm_eval import (RetrievalSet, ScoreSettings, caption_blocks, gather_rows, image_batch,
                                 image_blocks, model_device, pair_scores, prepare_images, score_matrix,
                                 set_metrics, split_backbone, text_batch)
from evaluation.retrieval_metrics import coco_1k_folds, retrieval_recalls
from model.itc import ITC_HEAD, has_itc_head, image_embeddings, region_mask, text_embeddings
from utils import distributed as du
from utils.device import autocast
from utils.errors import ConfigError

#: score of a pair the cross-encoder did not score for that query (finite, so the metrics accept it)
UNSCORED = float(np.finfo(np.float32).min)
BACKENDS = ("exact", "faiss")


class ShortlistSettings(Protocol):
    """What the shortlist reads (training.itm_config.ShortlistOptions, the checked config, is one)."""

    k_img: int | None   # images kept per caption (text->image); None: from the gallery size
    k_txt: int | None   # captions kept per image (image->text); None: from the gallery size
    k_fraction: float   # a k that is None: this fraction of the query's gallery (see gallery_k)
    k_max: int          # ... and at most this
    below_shortlist: str  # "dual_encoder" or "tied": the order of the candidates outside a shortlist
    backend: str        # "exact" or "faiss"
    chunk: int          # queries per matrix-product chunk of the exact backend
    embed_batch: int    # captions or images per single-modality pass


def require_itc_head(model, where: str) -> None:
    """Refuse shortlist mode on a model without the ``itc`` head, naming the checkpoint."""
    if not has_itc_head(model):
        raise ConfigError(f"shortlist: {where} has no '{ITC_HEAD}' head (keys {ITC_HEAD}.*); train or fine-tune "
                          f"with the 'itc' task (tasks/itc.py) to get one, or turn shortlist mode off")


# ------------------------------------------------------------------------------------------ embeddings


@torch.no_grad()
def embed_set(model, dataset: RetrievalSet, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised ITC embeddings: captions (n_txt, dim) and images (n_img, dim), fp32 on the model's device."""
    device = model_device(model)
    txt = []
    for s in range(0, len(dataset.txt_tokens), batch):
        b = text_batch(dataset.txt_tokens[s:s + batch], device, dataset.cls_id, dataset.sep_id)
        txt.append(text_embeddings(model, b["input_ids"], b["position_ids"]))
    img = []
    for s in range(0, len(dataset.img_fnames), batch):
        b = image_batch([dataset.load_image(f) for f in dataset.img_fnames[s:s + batch]], device)
        img.append(image_embeddings(model, b["img_feat"], b["img_pos_feat"],
                                    region_mask(b["num_bbs"], b["img_feat"].size(1))))
    return torch.cat(txt), torch.cat(img)


# ---------------------------------------------------------------------------------------------- k-NN


def knn(queries: torch.Tensor, gallery: torch.Tensor, k: int, backend: str = "exact", chunk: int = 1024
        ) -> np.ndarray:
    """(n_q, k) int64 gallery indices of each query's k largest inner products, best first.

    ``exact``: chunked ``queries @ gallery.T`` (fp32), sorted stably, so equal scores keep the lower index
    first. ``faiss``: an exact ``IndexFlatIP`` (the same shortlist up to float rounding of near-ties).
    """
    if not 1 <= k <= len(gallery):
        raise ValueError(f"knn: expected 1 <= k <= {len(gallery)} (gallery size), got {k}")
    if backend == "faiss":
        return _faiss_knn(queries, gallery, k)
    if backend != "exact":
        raise ValueError(f"knn: backend expected one of {BACKENDS}, got {backend!r}")
    out = []
    gallery_t = gallery.float().T
    for s in range(0, len(queries), chunk):
        sims = queries[s:s + chunk].float() @ gallery_t                        # (chunk, n_g)
        out.append(torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :k].cpu())
    return torch.cat(out).numpy().astype(np.int64) if out else np.zeros((0, k), dtype=np.int64)


def _faiss_knn(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> np.ndarray:
    try:
        import faiss  # optional: pip install faiss-cpu
    except ImportError as err:
        raise ConfigError("shortlist.backend 'faiss': the faiss module is not installed "
                          "(pip install faiss-cpu), or use backend 'exact'") from err
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(np.ascontiguousarray(gallery.float().cpu().numpy()))
    _, idx = index.search(np.ascontiguousarray(queries.float().cpu().numpy()), k)
    return idx.astype(np.int64)


def gallery_k(k: int | None, gallery: int, fraction: float, k_max: int) -> int:
    """The k used for a gallery of ``gallery`` candidates (one fold's images or captions).

    A k that is set is clipped to the gallery. None gives ``floor(fraction * gallery)``, at least 1 and at
    most ``k_max``: a default that follows the gallery, so that the cross-encoder scores at most
    ``2 * fraction`` of all pairs (n_txt * k_img + n_img * k_txt) on a 50-image demo set and on a 5K one
    alike, while large galleries stop at ``k_max`` candidates per query.
    """
    if k is not None:
        return max(1, min(k, gallery))
    return max(1, min(k_max, gallery, int(np.floor(fraction * gallery + 1e-9))))


@dataclass
class Shortlist:
    """Which pairs each query keeps: ``t2i`` (n_txt, n_img) bool (caption rows) and ``i2t`` (n_txt, n_img)
    bool (image columns); ``k_img``/``k_txt`` the sizes used (clipped to the smallest fold)."""

    t2i: np.ndarray
    i2t: np.ndarray
    k_img: int
    k_txt: int

    @property
    def pairs(self) -> np.ndarray:
        """(n_txt, n_img) bool: every pair the cross-encoder must score (the union of both directions)."""
        return self.t2i | self.i2t


def build_shortlist(txt_emb: torch.Tensor, img_emb: torch.Tensor, txt2img: np.ndarray, settings: ShortlistSettings,
                    img_folds: np.ndarray | None = None) -> Shortlist:
    """Top ``k_img`` images per caption and top ``k_txt`` captions per image, within each fold of
    ``img_folds`` (n_img,) (a caption belongs to its image's fold); None = one fold. Each k comes from
    :func:`gallery_k` on the smallest fold (so every query of every fold keeps the same number)."""
    n_txt, n_img = len(txt_emb), len(img_emb)
    folds = np.zeros(n_img, dtype=np.int64) if img_folds is None else np.asarray(img_folds, dtype=np.int64)
    groups = [(np.flatnonzero(folds[txt2img] == f), np.flatnonzero(folds == f)) for f in np.unique(folds)]
    k_img = gallery_k(settings.k_img, min(len(cols) for _, cols in groups), settings.k_fraction, settings.k_max)
    k_txt = gallery_k(settings.k_txt, min(len(rows) for rows, _ in groups), settings.k_fraction, settings.k_max)
    t2i = np.zeros((n_txt, n_img), dtype=bool)
    i2t = np.zeros((n_txt, n_img), dtype=bool)
    for rows, cols in groups:
        rows_t, cols_t = torch.as_tensor(rows, device=txt_emb.device), torch.as_tensor(cols, device=img_emb.device)
        top_img = cols[knn(txt_emb[rows_t], img_emb[cols_t], k_img, settings.backend, settings.chunk)]  # (r, k_img)
        t2i[rows[:, None], top_img] = True
        top_txt = rows[knn(img_emb[cols_t], txt_emb[rows_t], k_txt, settings.backend, settings.chunk)]  # (c, k_txt)
        i2t[top_txt, cols[:, None]] = True
    return Shortlist(t2i, i2t, k_img, k_txt)


def shortlist_recall(shortlist: Shortlist, txt2img: np.ndarray) -> dict[str, float]:
    """The shortlist's recall of the positive, in %: ``txt_recall_at_k`` (captions whose image is kept),
    ``img_recall_at_k`` (images with at least one own caption kept)."""
    t = np.asarray(txt2img)
    n_img = shortlist.i2t.shape[1]
    txt_hit = shortlist.t2i[np.arange(len(t)), t]
    img_hit = np.zeros(n_img, dtype=bool)
    np.logical_or.at(img_hit, t, shortlist.i2t[np.arange(len(t)), t])
    return {"txt_recall_at_k": float(100 * txt_hit.mean()), "img_recall_at_k": float(100 * img_hit.mean())}


# ------------------------------------------------------------------------------------- pair scoring


def pack_pair_list(txt_lens: torch.Tensor, num_bbs: torch.Tensor, txt_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """attn_masks, gather_index (P, L) for P pairs given their own text lengths (P,) and region counts (P,);
    for the c*m pairs of a full block in caption-major order it equals ``itm_eval.pack_pairs``."""
    tl, nb = txt_lens[:, None], num_bbs[:, None]
    steps = torch.arange(int(txt_lens.max() + num_bbs.max()), device=txt_lens.device)[None, :]
    real = steps < tl + nb
    gather = torch.where(steps < tl, steps, txt_width + steps - tl)
    return real.long(), gather * real


def _score_group(model, split, txt_emb: torch.Tensor, txt_lens: torch.Tensor, group: list, images: list,
                 head: str) -> torch.Tensor:
    """(P,) scores of the pairs of ``group`` = [(image block b, caption rows (n,), image rows (n,)), ...]
    against one caption block's embeddings txt_emb (c, Lt, H)."""
    c, lt, hidden = txt_emb.shape
    t_loc = torch.cat([torch.as_tensor(t, device=txt_emb.device) for _, t, _ in group])
    embs = [images[b]["emb"][torch.as_tensor(j, device=txt_emb.device)] for b, _, j in group]    # (n, Ni_b, H)
    nbbs = torch.cat([images[b]["num_bbs"][torch.as_tensor(j, device=txt_emb.device)] for b, _, j in group])
    ni = max(e.size(1) for e in embs)
    img = torch.cat([torch.nn.functional.pad(e, (0, 0, 0, ni - e.size(1))) for e in embs])      # (P, Ni, H)
    attn_masks, gather_index = pack_pair_list(txt_lens[t_loc], nbbs, lt)                       # (P, L)
    pair = torch.arange(len(t_loc), device=txt_emb.device)[:, None]
    row = torch.where(gather_index < lt, t_loc[:, None] * lt + gather_index, c * lt + pair * ni + (gather_index - lt))
    table = torch.cat([txt_emb.reshape(c * lt, hidden), img.reshape(-1, hidden)])
    return pair_scores(model, split.encode(table[row], attn_masks), head)


@torch.no_grad()
def score_pairs(model, dataset: RetrievalSet, need: np.ndarray, settings: ScoreSettings) -> np.ndarray:
    """Cross-encoder scores of the pairs marked in ``need`` (n_txt, n_img) bool; (n_txt, n_img) float32
    with :data:`UNSCORED` elsewhere, identical on every rank.

    Batches follow the exhaustive layout (itm_eval.score_local_rows): this rank's caption blocks, image
    blocks in box-count order; one caption block's needed pairs are taken image block by image block and
    a batch is cut before it would pass ``txt_block * img_block`` pairs. A fully needed block is therefore
    exactly the exhaustive batch, so with every pair needed the matrix equals :func:`itm_eval.score_matrix`
    bit for bit.
    """
    device = model_device(model)
    split = split_backbone(model)
    if split is None:
        raise ValueError("score_pairs: the backbone cannot be split into embed_text/embed_image/encode")
    rank, world = du.get_rank(), du.get_world_size()
    txt_blocks = caption_blocks([len(t) for t in dataset.txt_tokens], settings.txt_block, rank, world)
    img_blocks = image_blocks(dataset.img_nbb, settings.img_block)
    rows = np.concatenate(txt_blocks) if txt_blocks else np.zeros(0, dtype=np.int64)
    out = np.full((len(rows), len(dataset.img_fnames)), UNSCORED, dtype=np.float32)
    cap = settings.txt_block * settings.img_block
    was_training = model.training
    model.eval()
    try:
        with autocast(settings.precision, device):
            used = [bool(need[:, idx].any()) for idx in img_blocks]
            images = [prepare_images(split, dataset, idx, device) if u else None for idx, u in zip(img_blocks, used)]
            start = 0
            for t_idx in txt_blocks:
                _score_caption_block(model, split, dataset, t_idx, need[t_idx], img_blocks, images, cap,
                                     settings.head, out[start:start + len(t_idx)])
                start += len(t_idx)
    finally:
        model.train(was_training)
    return _gather_sparse(rows, out, len(dataset.txt_ids))


def _score_caption_block(model, split, dataset: RetrievalSet, t_idx: np.ndarray, need: np.ndarray,
                         img_blocks: list, images: list, cap: int, head: str, out: np.ndarray) -> None:
    """Fill ``out`` (c, n_img) with the needed pairs of one caption block (``need`` (c, n_img))."""
    if not need.any():
        return
    device = model_device(model)
    txt = text_batch([dataset.txt_tokens[i] for i in t_idx], device, dataset.cls_id, dataset.sep_id)
    txt_emb = split.embed_text(txt["input_ids"], txt["position_ids"])                         # (c, Lt, H)
    group: list = []

    def flush() -> None:
        if group:
            scores = _score_group(model, split, txt_emb, txt["txt_lens"], group, images, head).cpu().numpy()
            t_all = np.concatenate([t for _, t, _ in group])
            j_all = np.concatenate([img_blocks[b][j] for b, _, j in group])
            out[t_all, j_all] = scores
            group.clear()

    for b, j_idx in enumerate(img_blocks):
        t_loc, j_loc = np.nonzero(need[:, j_idx])               # caption-major, as the exhaustive block
        if len(t_loc) == 0:
            continue
        if sum(len(t) for _, t, _ in group) + len(t_loc) > cap:
            flush()
        group.append((b, t_loc, j_loc))
    flush()


def _gather_sparse(rows: np.ndarray, scores: np.ndarray, n_txt: int) -> np.ndarray:
    """Every rank's rows (itm_eval.gather_rows, which also refuses NaN: UNSCORED is finite)."""
    return gather_rows(rows, scores, n_txt)


# ------------------------------------------------------------------------------------------- metrics


def tiered(pair_scores_: np.ndarray, keep: np.ndarray, dual: np.ndarray | None, axis: int) -> np.ndarray:
    """One direction's matrix: the query's kept pairs hold their cross-encoder scores; every other pair is
    put strictly below the query's lowest kept score, ordered among themselves by the dual encoder's
    cosine ``dual`` (in [-1, 1]), or all at :data:`UNSCORED` without it. ``axis`` 1: queries are rows
    (captions), 0: columns (images). float64, so the lower tier keeps the cosines' order."""
    if dual is None:
        return np.where(keep, pair_scores_, UNSCORED).astype(np.float32)
    scores = pair_scores_.astype(np.float64)
    lowest = np.where(keep, scores, np.inf).min(axis=axis, keepdims=True)
    lowest = np.where(np.isfinite(lowest), lowest, 0.0)                       # a query with nothing kept
    return np.where(keep, scores, lowest - 2.0 + np.clip(dual.astype(np.float64), -1.0, 1.0))  # < lowest - 0.99


def tail_order(settings: ShortlistSettings, dual: np.ndarray) -> np.ndarray | None:
    """What :func:`tiered` orders the unshortlisted candidates by: the dual encoder's cosines ``dual``
    (n_txt, n_img), or None (all tied) for ``below_shortlist: tied``."""
    return dual if settings.below_shortlist == "dual_encoder" else None


def shortlist_metrics(pair_scores_: np.ndarray, shortlist: Shortlist, dataset: RetrievalSet, coco_folds: int = 0,
                      img_folds: np.ndarray | None = None, dual: np.ndarray | None = None) -> dict[str, float]:
    """Recalls of the reranked shortlist: text->image from each caption's row (its k_img images reranked),
    image->text from each image's column (its k_txt captions reranked). A positive outside the query's
    shortlist ranks below all k (see :func:`tiered`): with ``dual`` by its dual-encoder similarity among
    the other unshortlisted items, else tied with all of them (and ties count against it)."""
    t2i = tiered(pair_scores_, shortlist.t2i, dual, axis=1)
    i2t = tiered(pair_scores_, shortlist.i2t, dual, axis=0)
    if coco_folds > 1:
        return coco_1k_folds(t2i, dataset.txt2img, n_folds=coco_folds, img_folds=img_folds, i2t_scores=i2t)["mean"]
    return retrieval_recalls(t2i, dataset.txt2img, i2t_scores=i2t)


@dataclass
class ShortlistResult:
    """One set's figures: metric dicts and costs."""

    exhaustive: dict[str, float] | None
    dual: dict[str, float]
    rerank: dict[str, float]
    recall_at_k: dict[str, float]
    pairs_scored: int
    pairs_total: int
    seconds: dict[str, float] = field(default_factory=dict)
    k_img: int = 0
    k_txt: int = 0
    below_shortlist: str = "dual_encoder"

    def row(self) -> dict[str, Any]:
        """Flat dict for results.json / the table."""
        out = {"dual_ar": self.dual["r_mean"], "rerank_ar": self.rerank["r_mean"],
               "exhaustive_ar": self.exhaustive["r_mean"] if self.exhaustive else None,
               "pairs_scored": self.pairs_scored, "pairs_total": self.pairs_total,
               "k_img": self.k_img, "k_txt": self.k_txt, "below_shortlist": self.below_shortlist,
               **self.recall_at_k}
        out.update({f"seconds_{k}": v for k, v in self.seconds.items()})
        return out


@dataclass
class ShortlistRun:
    """What :func:`run_shortlist` computed: embeddings, the shortlist, the reranked scores, stage times."""

    txt_emb: torch.Tensor
    img_emb: torch.Tensor
    shortlist: Shortlist
    scores: np.ndarray
    seconds: dict[str, float]


def run_shortlist(model, dataset: RetrievalSet, score_settings: ScoreSettings, settings: ShortlistSettings,
                  img_folds: np.ndarray | None = None) -> ShortlistRun:
    """Embed, shortlist (within ``img_folds`` (n_img,) when given) and rerank one set, timing each stage."""
    require_itc_head(model, "the model")
    sync = torch.cuda.synchronize if model_device(model).type == "cuda" else (lambda: None)
    was_training = model.training
    model.eval()
    try:
        t0 = time.perf_counter()
        txt_emb, img_emb = embed_set(model, dataset, settings.embed_batch)
        sync()
        t1 = time.perf_counter()
        short = build_shortlist(txt_emb, img_emb, dataset.txt2img, settings, img_folds)
        t2 = time.perf_counter()
        scores = score_pairs(model, dataset, short.pairs, score_settings)
        sync()
        t3 = time.perf_counter()
    finally:
        model.train(was_training)
    return ShortlistRun(txt_emb, img_emb, short, scores,
                        {"embed": t1 - t0, "knn": t2 - t1, "rerank": t3 - t2, "total": t3 - t0})


def evaluate_shortlist(model, dataset: RetrievalSet, score_settings: ScoreSettings, settings: ShortlistSettings,
                       coco_folds: int = 0, img_folds: np.ndarray | None = None,
                       exhaustive: np.ndarray | None = None) -> tuple[ShortlistResult, np.ndarray]:
    """Shortlist, rerank and measure one set; ``exhaustive`` (the full score matrix, when already
    computed) adds the exhaustive AR. Returns the result and the reranked pair scores (UNSCORED elsewhere)."""
    run = run_shortlist(model, dataset, score_settings, settings, fold_ids(coco_folds, len(dataset.img_fnames),
                                                                           img_folds))
    dual_sims = (run.txt_emb @ run.img_emb.T).float().cpu().numpy()
    folds = img_folds if coco_folds > 1 else None
    result = ShortlistResult(
        exhaustive=set_metrics(exhaustive, dataset, coco_folds, folds) if exhaustive is not None else None,
        dual=set_metrics(dual_sims, dataset, coco_folds, folds),
        rerank=shortlist_metrics(run.scores, run.shortlist, dataset, coco_folds, folds,
                                 tail_order(settings, dual_sims)),
        recall_at_k=shortlist_recall(run.shortlist, dataset.txt2img),
        pairs_scored=int(run.shortlist.pairs.sum()), pairs_total=int(run.shortlist.pairs.size),
        seconds=run.seconds, k_img=run.shortlist.k_img, k_txt=run.shortlist.k_txt,
        below_shortlist=settings.below_shortlist)
    return result, run.scores


def exhaustive_scores(model, dataset: RetrievalSet, settings: ScoreSettings) -> tuple[np.ndarray, float]:
    """The exhaustive matrix and its wall time (for the comparison rows)."""
    t0 = time.perf_counter()
    scores = score_matrix(model, dataset, settings)
    return scores, time.perf_counter() - t0


def fold_ids(coco_folds: int, n_img: int, img_folds: np.ndarray | None) -> np.ndarray | None:
    """(n_img,) fold id per image for ``coco_folds`` > 1 (consecutive blocks without a fold file), else None."""
    if coco_folds <= 1:
        return None
    if img_folds is not None:
        return np.asarray(img_folds, dtype=np.int64)
    if n_img % coco_folds:
        raise ValueError(f"n_folds: {n_img} images cannot be split into {coco_folds} equal folds")
    return np.repeat(np.arange(coco_folds), n_img // coco_folds)


def pairs_ratio(results: Sequence[ShortlistResult]) -> float:
    """Total pairs of exhaustive scoring over pairs scored by the shortlist (>= 1)."""
    return sum(r.pairs_total for r in results) / max(sum(r.pairs_scored for r in results), 1)
