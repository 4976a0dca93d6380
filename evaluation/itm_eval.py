"""Cross-encoder scoring engine for image-text retrieval evaluation.

Every caption of a test set is scored against every image with the single-stream model, so the cost is
``n_txt * n_img`` encoder passes. What keeps it affordable:

* pairs are scored in blocks of ``txt_block`` captions x ``img_block`` images (one batch each);
* images are sorted by box count and captions by length before blocking, so a block pads little;
* when the backbone exposes ``embed_text`` / ``embed_image`` / ``encode`` (see :func:`has_split_backbone`),
  each caption's and each image's embedding-layer output is computed once and only the encoder runs per
  pair; otherwise the full backbone runs on every pair (same numbers, a little slower);
* caption blocks are dealt round-robin to ranks; the block layout does not depend on the world size, so
  every pair is computed in exactly the same batch whatever the number of ranks, and the gathered
  matrix is bit-identical to a single-process run. Each rank sends its rows with their caption indices.

Score of a pair (a logit, monotone in the probability, so ranking is unaffected and no ties appear from
saturation): ``head="rank"`` -> ``rank_output(pooled)`` (fine-tuned retrieval model);
``head="itm"`` -> ``itm_output(pooled)[1] - itm_output(pooled)[0]`` (log-odds of "match" of a pretraining
checkpoint, for zero-shot evaluation).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.collate import FIRST_POSITION, PAD_ID, PAD_POSITION, box_pos_feat
from utils import distributed as du
from utils.atomic import atomic_write
from utils.device import autocast
from utils.errors import DataError
from evaluation.retrieval_metrics import coco_1k_folds, retrieval_recalls

CLS_ID = 0  # XLM-R's <s> and </s>: defaults of a RetrievalSet built without a txt_db meta
SEP_ID = 2
HEADS = ("rank", "itm")

ImageLoader = Callable[[str], tuple[np.ndarray, np.ndarray]]


@dataclass
class RetrievalSet:
    """One retrieval test split, held as token ids plus a lazy image loader.

    Attributes:
        name: label used in file names and tables, e.g. ``"multi30k_de"``.
        txt_ids: (n_txt,) caption ids (txt_db keys), the rows of the score matrix.
        txt_tokens: (n_txt,) int arrays of token ids WITHOUT ``<s>``/``</s>``.
        img_fnames: (n_img,) image keys, the columns of the score matrix.
        txt2img: (n_txt,) int64 column index of each caption's image.
        img_nbb: (n_img,) number of regions of each image (used to sort images).
        load_image: ``fname -> (img_feat (n, D) float32, img_pos_feat (n, 7) float32)``.
        cls_id, sep_id: the ids put around each caption (``CLS``/``SEP`` of the txt_db's meta).
    """

    name: str
    txt_ids: list[str]
    txt_tokens: list[np.ndarray]
    img_fnames: list[str]
    txt2img: np.ndarray
    img_nbb: np.ndarray
    load_image: ImageLoader
    cls_id: int = CLS_ID
    sep_id: int = SEP_ID


@dataclass
class ScoreSettings:
    """How to run the scoring: head, block sizes, device and precision."""

    head: str = "rank"
    """"rank" (fine-tuned ``rank_output``) or "itm" (pretraining ``itm_output``, zero-shot)."""
    txt_block: int = 8
    """Captions per batch block; one batch holds ``txt_block * img_block`` pairs."""
    img_block: int = 32
    """Images per batch block."""
    precision: str = "fp32"
    """"fp32", "fp16" or "bf16" (autocast; CUDA only for fp16)."""
    use_split: bool | None = None
    """Reuse embeddings through embed_text/embed_image/encode; None = when the backbone has them."""

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"ScoreSettings.head: expected one of {HEADS}, got {self.head!r}")
        if self.txt_block < 1 or self.img_block < 1:
            raise ValueError(f"ScoreSettings: txt_block ({self.txt_block}) and img_block "
                             f"({self.img_block}) must be >= 1")
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"ScoreSettings.precision: expected fp32/fp16/bf16, got {self.precision!r}")


# ----------------------------------------------------------------------------------------------------
# Loading a test set from the databases


def image_arrays(img_db, fname: str) -> tuple[np.ndarray, np.ndarray]:
    """Region features (n, D) and 7-d positions (n, 7) of one image of ``img_db`` (float32).

    ``ImgDb.get`` returns a dict with ``features`` and ``norm_bb`` (n, 6) (``pos_feat`` (n, 7) is used
    when present); a tuple ``(features, norm_bb, pos_feat)`` is accepted as well.
    """
    item = img_db.get(fname)
    if isinstance(item, dict):
        feat = item["features"]
        pos = item["pos_feat"] if "pos_feat" in item else box_pos_feat(item["norm_bb"])
    else:
        feat, _norm_bb, pos = item
    return np.asarray(feat, dtype=np.float32), np.asarray(pos, dtype=np.float32)


def load_retrieval_set(name: str, txt_db, img_db) -> RetrievalSet:
    """Every caption of ``txt_db`` (none dropped for length) and every image they point to.

    Raises:
        DataError: a caption points to an image that ``img_db`` does not hold.
    """
    txt_ids = [str(i) for i in txt_db.ids]
    fnames = [txt_db.txt2img[i] for i in txt_ids]
    img_fnames = sorted(set(fnames))
    col = {f: j for j, f in enumerate(img_fnames)}
    missing = [f for f in img_fnames if f not in img_db.name2nbb]
    if missing:
        raise DataError(f"{getattr(img_db, 'img_dir', img_db)}: image {missing[0]!r} (caption of "
                        f"{getattr(txt_db, 'db_dir', txt_db)}) is not in the image db "
                        f"({len(missing)} missing)")
    return RetrievalSet(
        name=name,
        txt_ids=txt_ids,
        txt_tokens=[np.asarray(txt_db[i]["input_ids"], dtype=np.int64) for i in txt_ids],
        img_fnames=img_fnames,
        txt2img=np.asarray([col[f] for f in fnames], dtype=np.int64),
        img_nbb=np.asarray([img_db.name2nbb[f] for f in img_fnames], dtype=np.int64),
        load_image=lambda fname: image_arrays(img_db, fname),
        cls_id=int(txt_db.meta["CLS"]),
        sep_id=int(txt_db.meta["SEP"]),
    )


# ----------------------------------------------------------------------------------------------------
# Blocks and batches


def caption_blocks(lens: Sequence[int], txt_block: int, rank: int = 0, world_size: int = 1
                   ) -> list[np.ndarray]:
    """This rank's caption blocks: captions sorted by (length, index), cut into ``txt_block``-sized
    blocks, block ``b`` going to rank ``b % world_size``. Returns arrays of caption indices."""
    order = np.argsort(np.asarray(lens), kind="stable")
    blocks = [order[s:s + txt_block] for s in range(0, len(order), txt_block)]
    return blocks[rank::world_size]


def image_blocks(nbb: Sequence[int], img_block: int) -> list[np.ndarray]:
    """Images sorted by box count (stable), cut into ``img_block``-sized blocks of indices."""
    order = np.argsort(np.asarray(nbb), kind="stable")
    return [order[s:s + img_block] for s in range(0, len(order), img_block)]


def text_batch(tokens: Sequence[np.ndarray], device: torch.device, cls_id: int = CLS_ID,
               sep_id: int = SEP_ID) -> dict:
    """``<s> ids </s>`` for c captions: input_ids/position_ids (c, Lt) long, txt_lens (c,) long."""
    lens = torch.tensor([len(t) + 2 for t in tokens], dtype=torch.long)
    width = int(lens.max())
    input_ids = torch.full((len(tokens), width), PAD_ID, dtype=torch.long)
    for i, tok in enumerate(tokens):
        input_ids[i, :lens[i]] = torch.as_tensor(np.concatenate([[cls_id], tok, [sep_id]]))
    steps = torch.arange(width)[None, :]
    # XLM-R positions: first real token 2, padding 1.
    position_ids = torch.where(steps < lens[:, None], steps + FIRST_POSITION,
                               torch.full_like(steps, PAD_POSITION))
    return {"input_ids": input_ids.to(device), "position_ids": position_ids.to(device),
            "txt_lens": lens.to(device)}


def image_batch(arrays: Sequence[tuple[np.ndarray, np.ndarray]], device: torch.device) -> dict:
    """m images zero-padded: img_feat (m, Ni, D), img_pos_feat (m, Ni, 7) float, num_bbs (m,) long."""
    nbbs = torch.tensor([len(f) for f, _ in arrays], dtype=torch.long)
    n_max, dim = int(nbbs.max()), arrays[0][0].shape[1]
    feat = torch.zeros(len(arrays), n_max, dim)
    pos = torch.zeros(len(arrays), n_max, 7)
    for j, (f, p) in enumerate(arrays):
        feat[j, :len(f)] = torch.from_numpy(f)
        pos[j, :len(p)] = torch.from_numpy(p)
    return {"img_feat": feat.to(device), "img_pos_feat": pos.to(device), "num_bbs": nbbs.to(device)}


def pack_pairs(txt_lens: torch.Tensor, num_bbs: torch.Tensor, txt_width: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectorised packing (text then regions) for the c*m pairs of a block, pair p = t * m + j.

    Args:
        txt_lens: (c,) text lengths with specials; num_bbs: (m,) region counts;
        txt_width: Lt, the padded text width (regions start at Lt in the concatenated embeddings).
    Returns:
        attn_masks (c*m, L) long and gather_index (c*m, L) long, L = max(txt_lens) + max(num_bbs),
        the same layout as ``data.collate.pack_indices`` (0 on padding).
    """
    tl = txt_lens.repeat_interleave(len(num_bbs))[:, None]           # (c*m, 1)
    nb = num_bbs.repeat(len(txt_lens))[:, None]                       # (c*m, 1)
    steps = torch.arange(int(txt_lens.max() + num_bbs.max()), device=txt_lens.device)[None, :]
    real = steps < tl + nb                                            # (c*m, L)
    gather = torch.where(steps < tl, steps, txt_width + steps - tl)
    return real.long(), gather * real


# ----------------------------------------------------------------------------------------------------
# Scoring


@dataclass
class SplitBackbone:
    """The backbone cut at the embedding/encoder boundary (functions of eval-mode modules).

    embed_text(input_ids (B, Lt), position_ids (B, Lt)) -> (B, Lt, H);
    embed_image(img_feat (B, Ni, D), img_pos_feat (B, Ni, 7)) -> (B, Ni, H);
    encode(embeddings (B, L, H), attn_masks (B, L)) -> (B, L, H).
    """

    embed_text: Callable
    embed_image: Callable
    encode: Callable


def split_backbone(model) -> SplitBackbone | None:
    """The embedding/encoder split of ``model.roberta``, or None when it cannot be cut.

    Uses public ``embed_text``/``embed_image``/``encode`` methods when the backbone has them; otherwise
    the checkpoint-named sub-modules of ``model.model.UC2Model`` (``embeddings``, ``img_embeddings``
    with the image type row, ``encoder``). Tests check both paths against the full forward.
    """
    backbone = model.roberta
    names = ("embed_text", "embed_image", "encode")
    if all(callable(getattr(backbone, n, None)) for n in names):
        return SplitBackbone(*(getattr(backbone, n) for n in names))
    if not all(hasattr(backbone, n) for n in ("embeddings", "img_embeddings", "encoder")):
        return None

    def embed_image(img_feat: torch.Tensor, img_pos_feat: torch.Tensor) -> torch.Tensor:
        return backbone.img_embeddings(img_feat, img_pos_feat, backbone.embeddings.type_row(1))   # image = type 1

    return SplitBackbone(backbone.embeddings, embed_image, backbone.encoder)


def head_scores(model, pooled: torch.Tensor, head: str) -> torch.Tensor:
    """(B,) fp32 pair scores from the pooled output (B, H): rank logit, or ITM match log-odds.

    The head runs in fp32 outside autocast: fp16/bf16 logits have so few distinct values that among
    thousands of images a negative often ties with the positive, and a tie counts against it.
    """
    with torch.autocast(pooled.device.type, enabled=False):
        pooled = pooled.float()
        if head == "rank":
            return model.rank_output(pooled).squeeze(-1)
        logits = model.itm_output(pooled)                             # (B, 2): [no match, match]
        return logits[:, 1] - logits[:, 0]


def pair_scores(model, seq: torch.Tensor, head: str) -> torch.Tensor:
    """(B,) fp32 pair scores from the backbone output ``seq`` (B, L, H): pooler and head in fp32."""
    with torch.autocast(seq.device.type, enabled=False):
        return head_scores(model, model.roberta.pooler(seq[:, :1].float()), head)


def _score_block_full(model, txt: dict, img: dict, head: str) -> torch.Tensor:
    """(c, m) scores of a caption block x image block through the full backbone."""
    c, m = len(txt["txt_lens"]), len(img["num_bbs"])
    attn_masks, gather_index = pack_pairs(txt["txt_lens"], img["num_bbs"], txt["input_ids"].size(1))
    seq = model.roberta(txt["input_ids"].repeat_interleave(m, 0), txt["position_ids"].repeat_interleave(m, 0),
                        img["img_feat"].repeat(c, 1, 1), img["img_pos_feat"].repeat(c, 1, 1),
                        attn_masks, gather_index)                     # (c*m, L, H)
    return pair_scores(model, seq, head).view(c, m)


def _score_block_split(model, split: SplitBackbone, txt_emb: torch.Tensor, txt_lens: torch.Tensor,
                       img_emb: torch.Tensor, num_bbs: torch.Tensor, head: str) -> torch.Tensor:
    """(c, m) scores from cached embeddings txt_emb (c, Lt, H) and img_emb (m, Ni, H).

    The packed input of pair (t, j) is gathered straight from one table holding every caption's and
    every image's embedding rows, so nothing of size (c*m, Lt + Ni, H) is built besides the input.
    """
    (c, lt, hidden), (m, ni, _) = txt_emb.shape, img_emb.shape
    attn_masks, gather_index = pack_pairs(txt_lens, num_bbs, lt)      # (c*m, L)
    pair = torch.arange(c * m, device=txt_emb.device)[:, None]
    is_txt = gather_index < lt
    # Row of the table: caption t's token l at t*Lt + l; image j's region r at c*Lt + j*Ni + r.
    row = torch.where(is_txt, (pair // m) * lt + gather_index,
                      c * lt + (pair % m) * ni + (gather_index - lt))
    table = torch.cat([txt_emb.reshape(c * lt, hidden), img_emb.reshape(m * ni, hidden)])
    seq = split.encode(table[row], attn_masks)                        # (c*m, L, H)
    return pair_scores(model, seq, head).view(c, m)


def model_device(model) -> torch.device:
    """The device of the model's first parameter (where its inputs must go)."""
    return next(model.parameters()).device


@torch.no_grad()
def score_local_rows(model, dataset: RetrievalSet, settings: ScoreSettings, rank: int = 0,
                     world_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Score this rank's caption blocks against every image (the model should be in eval mode).

    Returns:
        rows (n_local,) int64 caption indices and scores (n_local, n_img) float32 for them.
    """
    device = model_device(model)
    split = split_backbone(model) if settings.use_split is not False else None
    if settings.use_split and split is None:
        raise ValueError("ScoreSettings.use_split=True but the backbone cannot be split into "
                         "embed_text/embed_image/encode")
    txt_blocks = caption_blocks([len(t) for t in dataset.txt_tokens], settings.txt_block, rank, world_size)
    img_blocks = image_blocks(dataset.img_nbb, settings.img_block)
    rows = np.concatenate(txt_blocks) if txt_blocks else np.zeros(0, dtype=np.int64)
    out = np.zeros((len(rows), len(dataset.img_fnames)), dtype=np.float32)
    with autocast(settings.precision, device):
        # Every image block is loaded (and embedded) once and reused by all caption blocks.
        images = [prepare_images(split, dataset, idx, device) for idx in img_blocks] if len(rows) else []
        start = 0
        for t_idx in txt_blocks:
            txt = text_batch([dataset.txt_tokens[i] for i in t_idx], device, dataset.cls_id, dataset.sep_id)
            txt_emb = split.embed_text(txt["input_ids"], txt["position_ids"]) if split else None
            # One device-to-host copy per caption block, not per batch, so the GPU never waits on it.
            row = torch.empty(len(t_idx), len(dataset.img_fnames), device=device)
            for j_idx, img in zip(img_blocks, images):
                if split:
                    row[:, torch.as_tensor(j_idx, device=device)] = _score_block_split(
                        model, split, txt_emb, txt["txt_lens"], img["emb"], img["num_bbs"], settings.head)
                else:
                    row[:, torch.as_tensor(j_idx, device=device)] = _score_block_full(model, txt, img, settings.head)
            out[start:start + len(t_idx)] = row.cpu().numpy()
            start += len(t_idx)
    return rows, out


def prepare_images(split: SplitBackbone | None, dataset: RetrievalSet, idx: np.ndarray,
                    device: torch.device) -> dict:
    """Load one image block; with a split backbone, embed it once (emb (m, Ni, H)) instead of
    keeping the raw features (m, Ni, D)."""
    img = image_batch([dataset.load_image(dataset.img_fnames[j]) for j in idx], device)
    if split is not None:
        img["emb"] = split.embed_image(img.pop("img_feat"), img.pop("img_pos_feat"))
    return img


class NonFiniteScoresError(ValueError):
    """The model produced NaN/Inf scores (diverged weights or non-finite features)."""


def gather_rows(rows: np.ndarray, scores: np.ndarray, n_txt: int) -> np.ndarray:
    """Assemble the (n_txt, n_img) matrix from every rank's (rows, scores); identity on one process.

    Rows travel with their caption indices, so the result does not depend on which rank scored what.
    """
    parts = du.all_gather_object((rows, scores)) if du.get_world_size() > 1 else [(rows, scores)]
    full = np.zeros((n_txt, scores.shape[1]), dtype=np.float32)
    # "scored" is its own mask: a NaN score (a diverged model) is not confused with a row nobody scored
    scored = np.zeros(n_txt, dtype=bool)
    for part_rows, part_scores in parts:
        full[part_rows] = part_scores
        scored[part_rows] = True
    if not scored.all():
        raise RuntimeError(f"gather_rows: {int((~scored).sum())} caption rows were scored by no rank")
    bad = ~np.isfinite(full)
    if bad.any():
        raise NonFiniteScoresError(f"{int(bad.any(axis=1).sum())} of {n_txt} caption rows hold NaN/Inf scores: "
                                   f"the model's weights or the image features are not finite (check the "
                                   f"checkpoint and the img_db)")
    return full


def score_matrix(model, dataset: RetrievalSet, settings: ScoreSettings | None = None) -> np.ndarray:
    """Every caption x every image of ``dataset``: (n_txt, n_img) float32, identical on every rank.

    The model is put in eval mode (no dropout) and restored to its previous mode afterwards.
    """
    settings = settings or ScoreSettings()
    rank, world = du.get_rank(), du.get_world_size()
    was_training = model.training
    model.eval()
    try:
        rows, scores = score_local_rows(model, dataset, settings, rank, world)
    finally:
        model.train(was_training)
    return gather_rows(rows, scores, len(dataset.txt_ids))


# ----------------------------------------------------------------------------------------------------
# Saving score matrices (numpy .npz, never pickle)


def save_scores(path: Path, scores: np.ndarray, dataset: RetrievalSet) -> Path:
    """Write ``scores`` (n_txt, n_img) with ``txt_ids``, ``img_fnames``, ``txt2img`` to ``path`` (.npz).

    Written to a temporary file and renamed, so a crash never leaves a half-written file. Strings are
    stored as fixed-width unicode arrays, loadable with ``np.load(path, allow_pickle=False)``.
    """
    return atomic_write(path, lambda f: np.savez(
        f, scores=scores.astype(np.float32), txt_ids=np.asarray(dataset.txt_ids, dtype=str),
        img_fnames=np.asarray(dataset.img_fnames, dtype=str), txt2img=dataset.txt2img))


def load_scores(path: Path) -> dict[str, np.ndarray]:
    """Read a file written by :func:`save_scores`; raises DataError naming the file on a bad layout."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError) as exc:  # pickled arrays are refused here, never loaded
        raise DataError(f"{path}: not a score file of plain arrays ({type(exc).__name__}: {exc})") from exc
    expected = {"scores", "txt_ids", "img_fnames", "txt2img"}
    if not expected <= out.keys():
        raise DataError(f"{path}: expected arrays {sorted(expected)}, found {sorted(out)}")
    n_txt, n_img = out["scores"].shape
    if len(out["txt_ids"]) != n_txt or len(out["img_fnames"]) != n_img or len(out["txt2img"]) != n_txt:
        raise DataError(f"{path}: scores {out['scores'].shape} do not match txt_ids "
                        f"({len(out['txt_ids'])}) / img_fnames ({len(out['img_fnames'])})")
    return out


# ----------------------------------------------------------------------------------------------------
# Evaluating several test sets into one table


def open_retrieval_set(spec, img_rule: dict[str, Any]) -> RetrievalSet:
    """A :class:`RetrievalSet` from a config spec (``name``, ``txt_db``, ``img_db``) and the box rule
    ``img_rule`` (conf_th, max_bb, min_bb, num_bb). All captions are kept (no length limit)."""
    from data.img_db import ImgDb   # imported here: the scoring engine itself needs no LMDB
    from data.txt_db import TxtDb
    return load_retrieval_set(spec.name, TxtDb(spec.txt_db, max_txt_len=None), ImgDb(spec.img_db, **img_rule))


def read_fold_file(path: str | Path, dataset: RetrievalSet) -> np.ndarray:
    """(n_img,) fold id of every image of ``dataset`` from a JSON file ``{img_fname: fold id}``.

    Raises:
        DataError: naming the file, when it is not such an object or misses one of the images.
    """
    try:
        folds = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the fold file ({exc})") from exc
    if not isinstance(folds, dict):
        raise DataError(f"{path}: expected a JSON object {{img_fname: fold id}}")
    missing = [f for f in dataset.img_fnames if not isinstance(folds.get(f), int)]
    if missing:
        raise DataError(f"{path}: no integer fold id for image {missing[0]!r} ({len(missing)} images lack one)")
    return np.array([folds[f] for f in dataset.img_fnames], dtype=np.int64)


def set_metrics(scores: np.ndarray, dataset: RetrievalSet, coco_folds: int = 0,
                img_folds: np.ndarray | None = None) -> dict[str, float]:
    """Recall@1/5/10 both ways and AR of one score matrix; with ``coco_folds`` > 1 the mean over that many
    image folds (``img_folds`` (n_img,) fold ids, else consecutive blocks of the columns, which are in
    file-name order), plus ``n_folds``."""
    if coco_folds > 1:
        return coco_1k_folds(scores, dataset.txt2img, n_folds=coco_folds, img_folds=img_folds)["mean"]
    return retrieval_recalls(scores, dataset.txt2img)


def evaluate_sets(model, specs: Sequence[Any], settings: ScoreSettings, setting: str,
                  open_set: Callable[[Any], RetrievalSet], out_dir: Path | None = None,
                  save: bool = True) -> list[dict[str, Any]]:
    """Score and measure every test set; returns results for evaluation.results_table.

    Args:
        specs: objects with ``name``, ``dataset``, ``lang``, ``coco_folds``, ``fold_file``
            (training.itm_config.RetrievalSetSpec).
        setting: row label, e.g. "English-only fine-tune" or "Zero-shot".
        open_set: spec -> RetrievalSet (e.g. ``lambda s: open_retrieval_set(s, rule)``).
        out_dir: where rank 0 writes ``scores_{name}.npz`` when ``save``.
    Returns:
        ``[{"setting", "dataset", "lang", "name", "metrics"}, ...]`` in the order of ``specs``.
    """
    return measure_sets(specs, setting, open_set, lambda spec, dataset: score_matrix(model, dataset, settings),
                        out_dir, save)


def measure_sets(specs: Sequence[Any], setting: str, open_set: Callable[[Any], RetrievalSet],
                 score: Callable[[Any, RetrievalSet], np.ndarray], out_dir: Path | None = None,
                 save: bool = True) -> list[dict[str, Any]]:
    """The part of :func:`evaluate_sets` that any scorer shares (the dual encoder's too): ``score(spec,
    dataset)`` gives the (n_txt, n_img) matrix; score files, folds and metrics are handled here, once."""
    results = []
    for spec in specs:
        dataset = open_set(spec)
        scores = score(spec, dataset)
        if save and out_dir is not None and du.is_main():
            save_scores(Path(out_dir) / f"scores_{spec.name}.npz", scores, dataset)
        folds = read_fold_file(spec.fold_file, dataset) if getattr(spec, "fold_file", "") else None
        results.append({"setting": setting, "dataset": spec.dataset, "lang": spec.lang, "name": spec.name,
                        "metrics": set_metrics(scores, dataset, spec.coco_folds, folds)})
    return results


def write_results(out_dir: Path, results: Sequence[dict[str, Any]]) -> str:
    """Write results.md / results.json on rank 0 (paper table-1 layout, R@K details, and a per-language
    table for a dataset outside table 1 such as the demo); returns the Markdown to print, which for such a
    dataset leaves out the (empty) table 1."""
    from evaluation.results_table import (TABLE1_COLUMNS, canonical_dataset, demo_markdown, detail_markdown,
                                     tables_markdown, write_tables)
    table1 = {d for d, _ in TABLE1_COLUMNS}
    others = [r["dataset"] for r in results if canonical_dataset(r["dataset"]) not in table1]
    demo = others[0] if others else None
    rows = [{k: r[k] for k in ("setting", "dataset", "lang", "metrics")} for r in results]
    if du.is_main():
        write_tables(out_dir, retrieval=rows, include_paper=demo is None, demo_dataset=demo)
    if demo is None:
        return tables_markdown(rows, include_paper=True)
    return (f"## Retrieval: Average Recall per language ({demo})\n\n{demo_markdown(rows, demo)}\n"
            f"## Retrieval: Recall@K\n\n{detail_markdown(rows)}")


# ----------------------------------------------------------------------------------------------------
# Throughput (for scripts/benchmark.py)


def encoder_flops_per_pair(config, txt_len: int, n_regions: int) -> float:
    """Forward FLOPs of the encoder on one packed pair of length L = txt_len + n_regions.

    Per layer and token: Q, K, V and output projections 4 * 2H^2, feed-forward 2 * 2HI, attention scores
    and weighted sum 2 * 2LH (multiply-add = 2 FLOPs). Embeddings and the pooler are left out (the split
    path computes embeddings once per caption / image, and they are < 1 % of a pair's work at base shape).
    """
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    length = txt_len + n_regions
    return float(layers * length * (8 * h * h + 4 * h * inter + 4 * length * h))


def synthetic_set(n_txt: int, n_img: int, txt_len: int, n_regions: int, img_dim: int, vocab_size: int = 1000,
                  seed: int = 0) -> RetrievalSet:
    """A random set of fixed shapes: captions of ``txt_len - 2`` ids in [5, vocab_size), images of
    ``n_regions`` boxes of width ``img_dim``."""
    rng = np.random.default_rng(seed)
    feats = {f"img{j}": (rng.normal(size=(n_regions, img_dim)).astype(np.float32),
                         rng.uniform(size=(n_regions, 7)).astype(np.float32)) for j in range(n_img)}
    names = sorted(feats)
    return RetrievalSet(name="synthetic", txt_ids=[str(i) for i in range(n_txt)],
                        txt_tokens=[rng.integers(5, vocab_size, size=txt_len - 2) for _ in range(n_txt)],
                        img_fnames=names, txt2img=np.arange(n_txt) % n_img,
                        img_nbb=np.full(n_img, n_regions), load_image=feats.__getitem__)


def measure_scoring(model, dataset: RetrievalSet, settings: ScoreSettings, repeats: int = 1) -> dict[str, float]:
    """Time :func:`score_matrix` on ``dataset`` (after one warm-up run).

    Returns ``pairs_per_s`` and ``tflops`` (achieved, from :func:`encoder_flops_per_pair` with the set's
    mean caption length + 2 and mean box count), to compare with the measured matmul peak.
    """
    import time
    score_matrix(model, dataset, settings)                            # warm-up (kernels, allocator)
    sync = torch.cuda.synchronize if model_device(model).type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        score_matrix(model, dataset, settings)
    sync()
    seconds = (time.perf_counter() - start) / repeats
    pairs = len(dataset.txt_ids) * len(dataset.img_fnames)
    txt_len = float(np.mean([len(t) + 2 for t in dataset.txt_tokens]))
    flops = pairs * encoder_flops_per_pair(model.config, round(txt_len), round(float(np.mean(dataset.img_nbb))))
    return {"pairs_per_s": pairs / seconds, "tflops": flops / seconds / 1e12, "seconds": seconds}
