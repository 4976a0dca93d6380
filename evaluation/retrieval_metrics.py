"""Image-text retrieval metrics: Recall@K in both directions, Average Recall, COCO 1K folds, Meta-Ave.

Conventions used by every function here:

* ``scores`` is the cross-encoder score matrix, shape (n_txt, n_img): row = caption, column = image.
* ``txt2img`` (n_txt,) gives the column index of each caption's own image. An image may have several
  captions (Multi30K en/de, MSCOCO: 5) or one (Multi30K fr/cs).
* Key names follow the QUERY side: ``img_rK`` is image->text (the image is the query; it is found at K if
  ANY of its captions is among its K best captions), ``txt_rK`` is text->image (the caption is the query;
  its own image must be among its K best images). Note: the original UNITER/UC2 logs name the RETRIEVED
  side instead (their ``txt_r1`` is our ``img_r1``).
* Recalls and ``r_mean`` (AR, mean of the 2*len(ks) recalls) are percentages in [0, 100]. Counts are
  returned as floats too, so the dict fits the trainer's ``validate() -> dict[str, float]`` contract.

Tie rule (the same in both directions): ties are broken AGAINST the correct items. A correct item is
ranked after every wrong item whose score is greater than OR EQUAL to its own, so its 0-based rank is the
number of wrong items scoring >= it. For image->text only the best-scoring correct caption matters, and
other correct captions never push it down. A constant score matrix therefore gets the worst possible
recall, never an optimistic one, and no recall can exceed 100 %.

The original UNITER/UC2 text->image code counted ``(topk == gt).nonzero() < K``: that compares BOTH columns
(row index and rank) of the 2-column ``nonzero()`` result with K, so rows 0..K-1 were counted a second time
and the recall could pass 100 %. Here each query contributes at most one hit.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_KS = (1, 5, 10)


def _as_numpy(x: Any) -> np.ndarray:
    """Convert a torch tensor (any device/dtype) or array-like to a numpy array without copying twice."""
    if hasattr(x, "detach"):  # torch.Tensor: avoid importing torch just for the isinstance check
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16",):  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _check_inputs(scores: Any, txt2img: Any, ks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert the inputs; returns scores (n_txt, n_img) and txt2img (n_txt,) int64."""
    s = _as_numpy(scores)
    t = _as_numpy(txt2img)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores: expected a non-empty 2-D (n_txt, n_img) matrix, got shape {s.shape}")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise ValueError(f"scores: expected a numeric matrix, got dtype {s.dtype}")
    if not np.all(np.isfinite(s)):
        bad = np.argwhere(~np.isfinite(s))[0]
        raise ValueError(f"scores: expected finite values, found {s[tuple(bad)]} at (txt {bad[0]}, img {bad[1]})")
    if t.shape != (s.shape[0],) or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"txt2img: expected {s.shape[0]} integer image indices (one per score row), "
                         f"got shape {t.shape} dtype {t.dtype}")
    out_of_range = (t < 0) | (t >= s.shape[1])
    if out_of_range.any():
        i = int(np.argmax(out_of_range))
        raise ValueError(f"txt2img: caption {i} points to image {t[i]}, expected 0 <= index < {s.shape[1]}")
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks: expected positive integers, got {tuple(ks)}")
    return s, t.astype(np.int64)


def _txt2img_ranks(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """0-based rank of each caption's own image among all images, ties against it.  Returns (n_txt,)."""
    pos = s[np.arange(s.shape[0]), t]                         # (n_txt,) score of the true pair
    # Every image scoring >= the true one ranks ahead; the true image itself is always counted once.
    return (s >= pos[:, None]).sum(axis=1) - 1


def _img2txt_ranks(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """0-based rank of each image's best own caption among all captions, ties against it.  Returns (n_img,)."""
    n_txt, n_img = s.shape
    n_caps = np.bincount(t, minlength=n_img)                  # (n_img,)
    if (n_caps == 0).any():
        missing = np.flatnonzero(n_caps == 0)[:5].tolist()
        raise ValueError(f"txt2img: images {missing} have no caption; image->text recall is undefined for them "
                         f"(drop those score columns first)")
    pos = s[np.arange(n_txt), t]                              # (n_txt,)
    best = np.full(n_img, -np.inf)
    np.maximum.at(best, t, pos.astype(np.float64))            # (n_img,) best score among own captions
    # Back to the scores' dtype (exact: each maximum is one of the scores) so the comparison below does
    # not upcast the whole matrix to float64.
    best = best.astype(s.dtype)
    n_ge = (s >= best[None, :]).sum(axis=0)                   # (n_img,) captions scoring >= best own
    # Own captions that reach the best score (the best one and any tied with it) are not wrong items.
    own_ge = np.bincount(t, weights=(pos >= best[t]), minlength=n_img).astype(np.int64)
    return n_ge - own_ge


def _grouped_img2txt_ranks(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """MLA's image->text ranking: each image's CAPTION GROUPS compete, a group scoring with its best caption.
    0-based rank of the own group among the n_img groups, ties against it.  Returns (n_img,)."""
    n_img = s.shape[1]
    group = np.full((n_img, n_img), -np.inf)                  # (query image, caption group)
    np.maximum.at(group.T, t, s.astype(np.float64))           # group[j, g] = max score of g's captions for j
    own = group[np.arange(n_img), np.arange(n_img)]
    return (group >= own[:, None]).sum(axis=1) - 1


def retrieval_recalls(scores: Any, txt2img: Any, ks: Sequence[int] = DEFAULT_KS,
                      img2txt: str = "standard", i2t_scores: Any = None) -> dict[str, float]:
    """Recall@K for image->text (``img_rK``) and text->image (``txt_rK``), and AR (``r_mean``), in percent.

    Args:
        scores: (n_txt, n_img) numpy array or torch tensor, higher = more likely a match.
        txt2img: (n_txt,) integer index of each caption's image (a column of ``scores``).
        ks: the cut-offs K.
        img2txt: "standard" (an own caption among the K best captions; UC2's) or "grouped" (MLA's code:
            the own caption group among the K best groups). R@1 is the same; grouped R@5/10 can only be
            >= standard, and both are equal with one caption per image. State which one a table uses.
        i2t_scores: optional (n_txt, n_img) matrix read for image->text instead of ``scores`` (a shortlist
            rerank fills each direction's candidates separately: evaluation/shortlist.py).
    Returns:
        ``img_r{K}``, ``txt_r{K}`` for each K, ``r_mean`` (mean of those), ``n_txt``, ``n_img``.
    Ties are broken against the correct item (see the module docstring).
    """
    if img2txt not in ("standard", "grouped"):
        raise ValueError(f"img2txt: expected 'standard' or 'grouped', got {img2txt!r}")
    s, t = _check_inputs(scores, txt2img, ks)
    q = s if i2t_scores is None else _check_same_shape(i2t_scores, s, txt2img, ks)
    img_rank = _img2txt_ranks(q, t) if img2txt == "standard" else _grouped_img2txt_ranks(q, t)  # (n_img,)
    txt_rank = _txt2img_ranks(s, t)                           # (n_txt,)
    return _assemble(img_rank, txt_rank, ks)


def _check_same_shape(other: Any, s: np.ndarray, txt2img: Any, ks: Sequence[int]) -> np.ndarray:
    """The checked second (image->text) matrix, of the same shape as ``s``."""
    q, _ = _check_inputs(other, txt2img, ks)
    if q.shape != s.shape:
        raise ValueError(f"i2t_scores: expected the shape of scores {s.shape}, got {q.shape}")
    return q


def _assemble(img_rank: Sequence[int], txt_rank: Sequence[int], ks: Sequence[int]) -> dict[str, float]:
    """Turn per-query 0-based ranks into the metric dict (shared with the brute-force reference)."""
    img_rank = np.asarray(img_rank)
    txt_rank = np.asarray(txt_rank)
    out: dict[str, float] = {}
    for k in ks:
        out[f"img_r{k}"] = float(100.0 * np.mean(img_rank < k))
    for k in ks:
        out[f"txt_r{k}"] = float(100.0 * np.mean(txt_rank < k))
    out["r_mean"] = float(np.mean([out[f"{side}_r{k}"] for side in ("img", "txt") for k in ks]))
    out["n_txt"] = float(len(txt_rank))
    out["n_img"] = float(len(img_rank))
    return out


def brute_force_recalls(scores: Any, txt2img: Any, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Slow, obviously-correct reference of :func:`retrieval_recalls` (Python loops; tests only).

    Each query's candidates are sorted by (score descending, correct items last), which is the tie rule,
    and the rank is the position of the first correct candidate in that order.
    """
    s, t = _check_inputs(scores, txt2img, ks)
    n_txt, n_img = s.shape
    txt_rank = []
    for i in range(n_txt):
        order = sorted(range(n_img), key=lambda j: (-float(s[i, j]), j == t[i]))
        txt_rank.append(order.index(int(t[i])))
    img_rank = []
    for j in range(n_img):
        own = {i for i in range(n_txt) if t[i] == j}
        if not own:
            raise ValueError(f"txt2img: image {j} has no caption")
        order = sorted(range(n_txt), key=lambda i: (-float(s[i, j]), i in own))
        img_rank.append(min(order.index(i) for i in own))
    return _assemble(img_rank, txt_rank, ks)


def coco_1k_folds(scores: Any, txt2img: Any, n_folds: int = 5, ks: Sequence[int] = DEFAULT_KS,
                  img_folds: Any = None, i2t_scores: Any = None) -> dict[str, Any]:
    """MSCOCO "1K test": recalls on ``n_folds`` image folds, averaged.

    By default images ``[f * m, (f + 1) * m)`` with ``m = n_img // n_folds`` form fold ``f``, so the
    fold composition depends on the column order of ``scores``: pass ``img_folds`` to follow a published
    split instead. Each caption follows its image, and only the within-fold blocks of ``scores`` are read,
    so a caption is never ranked against images of another fold.

    Args:
        scores: (n_txt, n_img) full score matrix (e.g. 25000 x 5000 for COCO 5K).
        txt2img: (n_txt,) image index of each caption.
        n_folds: number of folds; without ``img_folds``, ``n_img`` must be a multiple of it.
        img_folds: optional (n_img,) fold id in ``[0, n_folds)`` of each image.
        i2t_scores: optional matrix read for image->text (see :func:`retrieval_recalls`).
    Returns:
        ``{"mean": {metric: mean over folds, ..., "n_folds", "n_txt", "n_img" (totals)},
        "folds": [per-fold recall dict, ...]}``.
    """
    s, t = _check_inputs(scores, txt2img, ks)
    q = s if i2t_scores is None else _check_same_shape(i2t_scores, s, txt2img, ks)
    fold_of_img = _fold_ids(s.shape[1], n_folds, img_folds)                # (n_img,)
    fold_of_txt = fold_of_img[t]                                          # (n_txt,)
    folds = []
    for f in range(n_folds):
        cols = np.flatnonzero(fold_of_img == f)
        rows = np.flatnonzero(fold_of_txt == f)                           # captions of this fold's images
        if rows.size == 0:
            raise ValueError(f"txt2img: fold {f} ({cols.size} images) has no caption")
        new_col = np.full(s.shape[1], -1, dtype=np.int64)
        new_col[cols] = np.arange(cols.size)                              # global -> in-fold column
        folds.append(retrieval_recalls(s[np.ix_(rows, cols)], new_col[t[rows]], ks,
                                       i2t_scores=None if i2t_scores is None else q[np.ix_(rows, cols)]))
    metric_keys = [k for k in folds[0] if k not in ("n_txt", "n_img")]
    mean = {k: float(np.mean([fold[k] for fold in folds])) for k in metric_keys}
    mean.update(n_folds=float(n_folds), n_txt=float(sum(f["n_txt"] for f in folds)),
                n_img=float(s.shape[1]))
    return {"mean": mean, "folds": folds}


def _fold_ids(n_img: int, n_folds: int, img_folds: Any) -> np.ndarray:
    """(n_img,) fold id of each image: consecutive equal blocks, or the validated ``img_folds``."""
    if n_folds < 1:
        raise ValueError(f"n_folds: expected a positive number of folds, got {n_folds}")
    if img_folds is None:
        if n_img % n_folds:
            raise ValueError(f"n_folds: {n_img} images cannot be split into {n_folds} equal folds")
        return np.repeat(np.arange(n_folds), n_img // n_folds)
    ids = _as_numpy(img_folds)
    if ids.shape != (n_img,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"img_folds: expected {n_img} integer fold ids (one per image), "
                         f"got shape {ids.shape} dtype {ids.dtype}")
    empty = sorted(set(range(n_folds)) - set(ids.tolist()))
    if ((ids < 0) | (ids >= n_folds)).any() or empty:
        raise ValueError(f"img_folds: expected every id in [0, {n_folds}) used and no other; "
                         f"unused folds {empty}, values {sorted(set(ids.tolist()))[:10]}")
    return ids.astype(np.int64)


def meta_average(results: Mapping[tuple[str, str], Any]) -> float:
    """Meta-Ave: mean AR over every (dataset, lang) entry, each counted once (paper table 1).

    Args:
        results: ``{(dataset, lang): AR}``; a value may also be a recall dict holding ``r_mean``.
    """
    if not results:
        raise ValueError("meta_average: expected at least one (dataset, lang) result, got none")
    values = []
    for key, value in results.items():
        if isinstance(value, Mapping):
            if "r_mean" not in value:
                raise ValueError(f"meta_average: result {key} has no 'r_mean' (keys: {sorted(value)})")
            value = value["r_mean"]
        if not isinstance(value, (int, float, np.number)) or not np.isfinite(value):
            raise ValueError(f"meta_average: result {key} must be a finite AR number, got {value!r}")
        values.append(float(value))
    return float(np.mean(values))
