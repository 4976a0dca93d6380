"""Retrieval fine-tuning task ``itm_rank``: a hinge ranking loss over sampled or hard negatives.

For every positive (caption, image) pair the batch holds a group of ``1 + 2n`` rows::

    row 0            caption x its image          (positive)
    rows 1 .. n      caption x n negative images  (never its own image)
    rows n+1 .. 2n   n negative captions x image  (never a caption of the same image)

score = sigmoid(rank_output(pooled)); loss = mean over the 2k negatives of max(0, margin + s_neg - s_pos).

Random mode draws ``n = k`` negatives per side from the example's draw seed (numpy Generator; the same
on every run, rank and resume). Hard-negative mode (UNITER-style, ``hard_neg_every > 0``): on every
``hard_neg_every``-th batch of the task the group holds a pool of ``n = hard_neg_pool`` candidates per
side; :meth:`RetrievalTask.compute_loss` scores the whole pool with the current model (eval mode, no
grad), keeps the k highest-scoring negatives per side and trains on those rows only.

Language settings are configuration only: the training set is a list of (txt_db, img_db) parts
(English only, one language, or all languages); parts are concatenated under one flat index that is
sampled uniformly, so each part is drawn in proportion to its size. Negatives come from the same part.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from data.collate import collate_backbone
from data.img_db import ImgDb
from utils.errors import DataError
from data.sampler import TokenBucketSampler
from data.shared_table import SharedArray, StringTable
from model.heads import itm_head, rank_head
from tasks.base import LoaderOptions, PartIndex, make_loader, run_backbone, text_example, wrap_text
from utils.device import move_to_device
from model.config import UC2ModelConfig
from model.model import UC2ForImageTextRetrieval, UC2WithHeads
from model.weights import load_uc2_checkpoint, read_state_file
from tasks.context import DatasetBinding
from tasks.registry import PRETRAIN, RUN, RunSpec, known_head_names, register_run, register_task, resolve_task_config
from training.itm_config import EvalOptions, RetrievalConfig, RetrievalEvalConfig, RetrievalSetSpec, ShortlistOptions
from utils.errors import ConfigError
from training.setup import init_weights, resolve_model_config
from utils import distributed as du
from utils.config import parse_args_and_config
from utils.device import pick_device
from utils.faults import check_output_dir
from evaluation import itm_eval, shortlist
from evaluation.retrieval_metrics import retrieval_recalls

#: ``rank_output`` is trained; ``itm_output`` scores zero-shot and is where ``rank_output`` starts from.
RETRIEVAL_HEADS = {"itm_output": itm_head, "rank_output": rank_head}
BACKBONE_KEYS = ("input_ids", "position_ids", "img_feat", "img_pos_feat", "attn_masks", "gather_index")


@dataclass(frozen=True)
class RankSettings:
    """Knobs of the ranking loss and of negative mining.

    Attributes:
        negative_size: k, negatives per side trained on for each positive.
        margin: hinge margin between the positive and each negative score.
        hard_neg_every: 0 = random negatives only; n >= 1 = every n-th batch mines hard negatives.
        hard_neg_pool: candidates per side scored when mining (must be >= negative_size).
    """

    negative_size: int = 1
    margin: float = 0.2
    hard_neg_every: int = 0
    hard_neg_pool: int = 16

    def __post_init__(self) -> None:
        if self.negative_size < 1:
            raise ValueError(f"negative_size: expected >= 1, got {self.negative_size}")
        if self.hard_neg_every < 0:
            raise ValueError(f"hard_neg_every: expected >= 0, got {self.hard_neg_every}")
        if self.hard_neg_every and self.hard_neg_pool < self.negative_size:
            raise ValueError(f"hard_neg_pool ({self.hard_neg_pool}) must be >= negative_size "
                             f"({self.negative_size})")

    def pool_size(self, batch_number: int) -> int:
        """Negatives per side drawn for the task's ``batch_number``-th batch (0-based)."""
        if self.hard_neg_every and batch_number % self.hard_neg_every == 0:
            return self.hard_neg_pool
        return self.negative_size


class PairSource:
    """Positive pairs of one or more ``(TxtDb, ImgDb)`` parts under one flat index.

    Per part: ``ids`` (caption ids), ``images`` (sorted image names) and ``cap_img`` (n_cap,) int64,
    the image index of every caption, which is what negative drawing needs. They are shared tables
    (data/shared_table.py), so data-loader workers map them instead of unpickling copies.
    """

    def __init__(self, parts: Sequence[tuple[Any, Any]]):
        if not parts:
            raise DataError("itm_rank: expected at least one (txt_db, img_db) training part, got none")
        self.parts = list(parts)
        self.ids: list[StringTable] = []
        self.images: list[StringTable] = []
        self.cap_img: list[SharedArray] = []
        for txt, img in self.parts:
            self._add_part(txt, img)
        self._index = PartIndex([len(ids) for ids in self.ids], "pair")

    def _add_part(self, txt, img) -> None:
        ids = [str(i) for i in txt.ids]
        fnames = [txt.txt2img[i] for i in ids]
        names = sorted(set(fnames))
        where = getattr(txt, "db_dir", "txt_db")
        if len(names) < 2:
            raise DataError(f"{where}: itm_rank needs captions of at least two images, found {len(names)}")
        missing = [f for f in names if f not in img.name2nbb]
        if missing:
            raise DataError(f"{where}: image {missing[0]!r} is not in image db "
                            f"{getattr(img, 'img_dir', img)} ({len(missing)} missing)")
        col = {f: j for j, f in enumerate(names)}
        self.ids.append(StringTable(ids))
        self.images.append(StringTable(names, sorted_=True))
        self.cap_img.append(SharedArray(np.array([col[f] for f in fnames], dtype=np.int64)))

    def __len__(self) -> int:
        return len(self._index)

    def locate(self, index: int) -> tuple[int, int]:
        """(part, caption index within the part) of flat ``index``."""
        return self._index.locate(index)

    def caption(self, part: int, cap: int) -> torch.Tensor:
        """``<s> ids </s>`` (Lt,) of caption ``cap`` of ``part``."""
        txt = self.parts[part][0]
        return wrap_text(txt[self.ids[part][cap]]["input_ids"], txt.meta)

    def image(self, part: int, img: int) -> dict[str, torch.Tensor]:
        """``img_feat`` (n, D) and ``img_pos_feat`` (n, 7) of image index ``img`` of ``part``."""
        feat, pos = itm_eval.image_arrays(self.parts[part][1], self.images[part][img])
        return {"img_feat": torch.from_numpy(feat), "img_pos_feat": torch.from_numpy(pos)}

    def negative_images(self, part: int, cap: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n,) image indices other than the caption's own; distinct while there are enough."""
        n_img, own = len(self.images[part]), self.cap_img[part][cap]
        draw = rng.choice(n_img - 1, size=n, replace=n > n_img - 1)
        return draw + (draw >= own)  # skip over the own image's slot

    def negative_captions(self, part: int, cap: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n,) caption indices whose image differs from caption ``cap``'s image (uniform, with
        replacement), by rejection: each draw is kept with probability (captions of other images)/all."""
        cap_img = self.cap_img[part].array
        own = cap_img[cap]
        out: list[np.ndarray] = []
        got = 0
        while got < n:
            draw = rng.integers(len(cap_img), size=2 * (n - got) + 4)
            draw = draw[cap_img[draw] != own][: n - got]
            out.append(draw)
            got += len(draw)
        return np.concatenate(out)


def hinge_rank_loss(pos: torch.Tensor, neg: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over all negatives of ``max(0, margin + neg - pos)``: pos (B,), neg (B, 2k) -> scalar."""
    return torch.clamp(margin + neg - pos[:, None], min=0).mean()


class RankDataset(Dataset):
    """Map-style dataset keyed by ``(pair index, draw seed, n)``: one group of ``1 + 2n`` examples."""

    def __init__(self, source: PairSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int, int]) -> list[dict]:
        index, draw_seed, n = (int(v) for v in key)
        rng = np.random.default_rng(draw_seed)
        part, cap = self.source.locate(index)
        src = self.source
        own_txt, own_img = src.caption(part, cap), src.image(part, src.cap_img[part][cap])
        group = [text_example(own_txt, own_img)]
        group += [text_example(own_txt, src.image(part, j)) for j in src.negative_images(part, cap, n, rng)]
        group += [text_example(src.caption(part, c), own_img) for c in src.negative_captions(part, cap, n, rng)]
        return group


def rank_collate(groups: list[list[dict]]) -> dict:
    """Backbone keys for B groups of 1 + 2n rows (group-major), plus ``n_neg`` (int)."""
    batch = collate_backbone([ex for group in groups for ex in group])
    batch["n_neg"] = (len(groups[0]) - 1) // 2
    return batch


class _PoolBatches:
    """Batch sampler: the token-bucket sampler's (index, seed) batches with each batch's pool size."""

    def __init__(self, sampler: TokenBucketSampler, start_batch: int, settings: RankSettings):
        self.sampler, self.start_batch, self.settings = sampler, start_batch, settings

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for number, batch in enumerate(self.sampler.batches(self.start_batch), start=self.start_batch):
            n = self.settings.pool_size(number)
            yield [(i, s, n) for i, s in batch]


def rank_logits(model, batch: dict) -> torch.Tensor:
    """(rows,) fp32 rank logits (pooler and head outside autocast, as in evaluation)."""
    return itm_eval.pair_scores(model, run_backbone(model, batch), "rank")


def select_rows(batch: dict, rows: torch.Tensor) -> dict:
    """The backbone keys of ``batch`` restricted to ``rows`` (R,), packed length trimmed to fit."""
    out = {key: batch[key].index_select(0, rows) for key in BACKBONE_KEYS}
    length = int(out["attn_masks"].sum(1).max())
    out["attn_masks"], out["gather_index"] = out["attn_masks"][:, :length], out["gather_index"][:, :length]
    return out


@torch.no_grad()
def mine_hard_negatives(model, batch: dict, k: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """Keep, per group, the positive and the k highest-scoring negatives of each side of its pool.

    Scores the whole pool (B * (1 + 2n) rows) in eval mode, then returns a batch of B * (1 + 2k) rows in
    the same group layout, and logs the mean sigmoid score of the kept negatives and of the whole pool.
    """
    n = batch["n_neg"]
    was_training = model.training
    model.eval()
    try:
        scores = torch.sigmoid(rank_logits(model, batch)).view(-1, 1 + 2 * n)   # (B, 1 + 2n)
    finally:
        model.train(was_training)
    top_img = scores[:, 1:1 + n].topk(k, dim=1).indices + 1                    # (B, k) columns
    top_txt = scores[:, 1 + n:].topk(k, dim=1).indices + 1 + n                 # (B, k)
    cols = torch.cat([torch.zeros_like(top_img[:, :1]), top_img, top_txt], 1)  # (B, 1 + 2k)
    rows = (torch.arange(len(scores), device=cols.device)[:, None] * (1 + 2 * n) + cols).reshape(-1)
    kept = scores.gather(1, cols[:, 1:])
    logs = {"hard_neg_score": kept.mean().detach(), "pool_neg_score": scores[:, 1:].mean().detach()}
    out = select_rows(batch, rows)
    out["n_neg"] = k
    return out, logs


class RetrievalTask:
    """TrainTask (docs/ARCHITECTURE.md) for retrieval fine-tuning.

    Args:
        name, weight: the trainer's task key and mix weight.
        source: training pairs; settings: loss and mining knobs.
        batch_size: positive pairs per micro-batch (each adds 2k negative rows).
        val_sets: retrieval sets for :meth:`validate` (recall; ``r_mean`` is the metric to keep best).
        score_settings: block sizes / precision of validation scoring.
    """

    def __init__(self, name: str, source: PairSource, settings: RankSettings, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, weight: float = 1.0,
                 val_sets: Sequence[itm_eval.RetrievalSet] = (),
                 score_settings: itm_eval.ScoreSettings | None = None, options: LoaderOptions | None = None):
        self.name, self.weight = name, float(weight)
        self.source, self.settings = source, settings
        self.dataset = RankDataset(source)
        # Every pair counts as one "token", so a batch holds exactly batch_size pairs.
        self.sampler = TokenBucketSampler(np.ones(len(source), dtype=np.int64), batch_tokens=batch_size,
                                          bucket_size=max(len(source), 1), size_multiple=1, seed=seed,
                                          rank=rank, world_size=world_size)
        self.val_sets = list(val_sets)
        self.score_settings = score_settings or itm_eval.ScoreSettings(head="rank")
        self.options = options or LoaderOptions()
        self.heads = dict(RETRIEVAL_HEADS)

    def train_batches(self, start_batch: int = 0) -> Iterator[dict]:
        """Infinite, deterministic batches on the task's device, skipping the first ``start_batch``."""
        batches = _PoolBatches(self.sampler, start_batch, self.settings)
        for batch in make_loader(self.dataset, batches, rank_collate, self.options):
            yield move_to_device(batch, self.options.device)

    def compute_loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """Hinge loss of one micro-batch; pools larger than k are mined for hard negatives first."""
        k, logs = self.settings.negative_size, {}
        if batch["n_neg"] > k:
            batch, logs = mine_hard_negatives(model, batch, k)
        scores = torch.sigmoid(rank_logits(model, batch)).view(-1, 1 + 2 * k)     # (B, 1 + 2k)
        loss = hinge_rank_loss(scores[:, 0], scores[:, 1:], self.settings.margin)
        logs.update(loss=loss.detach(), pos_score=scores[:, 0].mean().detach(),
                    neg_score=scores[:, 1:].mean().detach())
        return loss, logs

    def validate(self, model) -> dict[str, float]:
        """Recall metrics per validation set (prefixed by its name when several) and ``r_mean``, the
        mean AR over the sets. Identical on every rank (the score matrix is gathered)."""
        if not self.val_sets:
            return {}
        out: dict[str, float] = {}
        for val in self.val_sets:
            recalls = retrieval_recalls(itm_eval.score_matrix(model, val, self.score_settings), val.txt2img)
            prefix = f"{val.name}/" if len(self.val_sets) > 1 else ""
            out.update({f"{prefix}{key}": value for key, value in recalls.items()})
        if len(self.val_sets) > 1:
            out["r_mean"] = float(np.mean([out[f"{v.name}/r_mean"] for v in self.val_sets]))
        return out



# ------------------------------------------------------------------------------------- registration, run
TASK_NAME = "itm_rank"
LOG = logging.getLogger("retrieval")


def img_rule(cfg) -> dict:
    """The region-selection rule every image db of the run is opened with."""
    return {"conf_th": cfg.conf_th, "max_bb": cfg.max_bb, "min_bb": cfg.min_bb, "num_bb": cfg.num_bb}


def score_settings(cfg, head: str) -> itm_eval.ScoreSettings:
    return itm_eval.ScoreSettings(head=head, txt_block=cfg.eval.txt_block, img_block=cfg.eval.img_block,
                                  precision=cfg.precision)


def example_config(paths: Mapping[str, str]) -> RetrievalConfig:
    """A tiny retrieval run over the contract-test corpus (tests/_task_corpus.py)."""
    split = RetrievalSetSpec(name="all", txt_db=paths["txt_db"], img_db=paths["img_db"])
    return RetrievalConfig(output_dir=paths["output_dir"], model_config=paths["model_config"],
                           train_datasets=[split], val_datasets=[split], train_batch_size=4, negative_size=2,
                           eval=EvalOptions(txt_block=8, img_block=4, save_scores=False))


@register_task(TASK_NAME, config=RetrievalConfig, heads=RETRIEVAL_HEADS, places=(RUN,), example_config=example_config)
def build_retrieval_task(cfg: RetrievalConfig, ctx) -> RetrievalTask:
    """The itm_rank task over the merged training sets, validating on ``val_datasets``."""
    parts = [(ctx.open_txt_db(s.txt_db, max_txt_len=cfg.max_txt_len), ctx.img_db(s.img_db))
             for s in cfg.train_datasets]
    settings = RankSettings(cfg.negative_size, cfg.margin, cfg.hard_neg_every, cfg.hard_neg_pool)
    return RetrievalTask(
        TASK_NAME, PairSource(parts), settings, batch_size=cfg.train_batch_size, seed=cfg.seed, weight=cfg.rank_weight,
        rank=ctx.rank, world_size=ctx.world_size,
        val_sets=[itm_eval.open_retrieval_set(s, img_rule(cfg)) for s in cfg.val_datasets],
        score_settings=score_settings(cfg, "rank"), options=ctx.loader)


def build_extra_tasks(cfg: RetrievalConfig, ctx) -> list:
    """The objectives of ``cfg.tasks`` (e.g. ITC, whose head then shortlists at test time) on the merged
    training sets, each weighted by its ``mix_ratio`` (itm_rank weighs 1.0); task names are the objectives'
    own (``itc``). Their batch size must count examples (``batch_size``), as train_batch_size counts pairs."""
    if not cfg.tasks:
        return []
    txt_dbs = [s.txt_db for s in cfg.train_datasets]
    source = ctx.source(txt_dbs, [s.img_db for s in cfg.train_datasets], cfg.max_txt_len)
    built = []
    for i, entry in enumerate(cfg.tasks):
        spec, task_cfg = resolve_task_config(entry, cfg, f"tasks[{i}]", PRETRAIN)
        if getattr(task_cfg, "batch_size", 0) < 1:
            raise ConfigError(f"tasks[{i}].batch_size: set the examples per {spec.name} batch (> 0); the "
                              f"retrieval run's train_batch_size counts positive pairs, not tokens")
        ratio = cfg.mix_ratio[i] if cfg.mix_ratio else 1.0
        built.append(spec.build(task_cfg, ctx.for_dataset(DatasetBinding("", ratio, source, None))))
    return built


def build_retrieval_model(cfg: RetrievalConfig, ctx, tasks: list) -> tuple[UC2WithHeads, dict]:
    """Backbone + the heads the task declares, shaped like every other run's model (model_config, feature
    width from the first training image db, the run's dropout), initialised from ``cfg.checkpoint``
    (a pretraining checkpoint: ``rank_output`` starts from ``itm_output``'s match row)."""
    img_db = ctx.img_db(cfg.train_datasets[0].img_db)
    mconf = resolve_model_config(cfg, img_db.feat_dim, img_db.label_dim)
    heads = {**RETRIEVAL_HEADS, **{name: f for task in tasks for name, f in task.heads.items()}}
    model = UC2WithHeads(mconf, heads, fresh=heads)
    init_weights(model, cfg, known_heads=known_head_names())
    check_eval_dbs(cfg, mconf, [*cfg.val_datasets, *cfg.test_datasets])  # training parts: train.check_run_dbs
    return model, mconf.to_dict()


def lr_multipliers(cfg: RetrievalConfig) -> dict[str, float] | None:
    """Per-prefix learning-rate multipliers: the XLM-R text embeddings may get their own rate."""
    return {"roberta.embeddings": cfg.embeddings_lr_mult} if cfg.embeddings_lr_mult != 1.0 else None


def final_evaluation(cfg: RetrievalConfig, trainer, ctx, metrics: dict) -> str:
    """Evaluate the best checkpoint (else the final weights) on the test sets; print and return the
    Markdown table ('' without test sets)."""
    if not cfg.test_datasets:
        return ""
    model, best_path = trainer.model, trainer.ckpt.dir / "model_best.pt"
    if best_path.is_file():
        model.load_state_dict(read_state_file(best_path))
        LOG.info(f"test evaluation with the best validation weights {best_path}")
    out_dir = Path(cfg.results_dir or Path(cfg.output_dir) / "results")
    settings, open_set = score_settings(cfg, "rank"), lambda spec: itm_eval.open_retrieval_set(spec, img_rule(cfg))
    timed: dict[str, tuple[np.ndarray, float]] = {}
    with torch.no_grad():
        results = itm_eval.measure_sets(cfg.test_datasets, cfg.setting, open_set,
                                        lambda spec, ds: _timed_scores(model, ds, settings, spec.name, timed),
                                        out_dir, cfg.eval.save_scores)
    table = itm_eval.write_results(out_dir, results)
    if shortlist.has_itc_head(model):  # a fine-tune that mixed in ITC: the fast path on the same test sets
        rows = shortlist_rows(model, cfg.test_datasets, settings, cfg.shortlist, open_set, timed)
        table += "\n" + write_shortlist(out_dir, rows)
    if du.is_main():
        print(table, flush=True)
    return table


def _timed_scores(model, dataset, settings, name: str, keep: dict) -> np.ndarray:
    """The exhaustive matrix, kept with its wall time under ``name`` (for the shortlist table)."""
    scores, seconds = shortlist.exhaustive_scores(model, dataset, settings)
    keep[name] = (scores, seconds)
    return scores


def shortlist_rows(model, specs, settings: itm_eval.ScoreSettings, options: ShortlistOptions, open_set,
                   exhaustive: dict[str, tuple[np.ndarray, float]] | None = None) -> list[dict]:
    """Shortlist + rerank every set (folds as the exhaustive path); the exhaustive matrix and time come
    from ``exhaustive`` by set name, else are measured here when ``options.compare_exhaustive``."""
    rows = []
    for spec in specs:
        dataset = open_set(spec)
        folds = itm_eval.read_fold_file(spec.fold_file, dataset) if spec.fold_file else None
        full = (exhaustive or {}).get(spec.name)
        if full is None and options.compare_exhaustive:
            full = shortlist.exhaustive_scores(model, dataset, settings)
        result, _ = shortlist.evaluate_shortlist(model, dataset, settings, options, spec.coco_folds, folds,
                                                 None if full is None else full[0])
        row = {"name": spec.name, "dataset": spec.dataset, "lang": spec.lang, **result.row(),
               "metrics": result.rerank, "seconds_exhaustive": None if full is None else full[1]}
        rows.append(row)
    return rows


def write_shortlist(out_dir: Path, rows: list[dict]) -> str:
    """shortlist.md / shortlist.json on rank 0; the Markdown."""
    from evaluation.results_table import shortlist_markdown, write_shortlist_table
    if du.is_main():
        return write_shortlist_table(out_dir, rows)
    return shortlist_markdown(rows)


def load_eval_model(cfg: RetrievalEvalConfig) -> tuple[UC2ForImageTextRetrieval, str]:
    """The model with the checkpoint's weights on this rank's device, and the head to score with."""
    mconf = UC2ModelConfig.from_json(cfg.model_config) if cfg.model_config else UC2ModelConfig()
    state = read_state_file(cfg.checkpoint)
    model = UC2ForImageTextRetrieval(mconf, extra_heads=itc_head_from_state(state))
    if cfg.shortlist.enabled:  # before any weights are loaded or sets opened
        shortlist.require_itc_head(model, f"checkpoint {cfg.checkpoint}")
    head = cfg.head
    if head == "auto":
        head = "rank" if "rank_output.weight" in state else "itm"
    # A pretraining checkpoint fills rank_output from the ITM match row; the "itm" head ignores it anyway.
    LOG.info(load_uc2_checkpoint(model, state, known_heads=known_head_names()).summary())
    return model.to(pick_device()).eval(), head


def itc_head_from_state(state: Mapping[str, torch.Tensor]) -> dict:
    """``{"itc": factory}`` shaped like the checkpoint's ``itc.*`` keys, or {} when it has none."""
    key = "itc.text_proj.2.weight"
    if key not in state:
        return {}
    from model.itc import itc_head_factory
    return {"itc": itc_head_factory(dim=int(state[key].shape[0]))}


def check_eval_dbs(cfg: Any, model_config: UC2ModelConfig, specs: Sequence[Any]) -> None:
    """Every listed set's img_db (and txt_db, when the spec has one) fits the model, checked before any
    set is scored: a width mismatch otherwise fails only when that set's turn comes."""
    from data.compat import check_img_db_width, check_txt_db_vocab
    from data.txt_db import TxtDb

    where = f"the model ({cfg.model_config or 'default config'})"
    for spec in specs:
        if getattr(spec, "txt_db", None):
            check_txt_db_vocab(TxtDb(spec.txt_db), model_config.vocab_size, where)
        check_img_db_width(ImgDb(spec.img_db, **img_rule(cfg)), model_config.img_dim, where)


def evaluate(argv: Sequence[str] | None = None) -> list[dict]:
    """``evaluate.py --task itm_rank`` (``inf_itm.py``): score every test set, write and print (rank 0)
    one results table; returns the per-set results."""
    cfg = parse_args_and_config(RetrievalEvalConfig, argv)
    check_output_dir(cfg.output_dir)  # before any scoring
    du.init_distributed()
    try:
        model, head = load_eval_model(cfg)
        check_eval_dbs(cfg, model.config, cfg.test_datasets)
        setting = cfg.setting or ("Zero-shot (ITM head)" if head == "itm" else "Fine-tuned")
        settings = itm_eval.ScoreSettings(head=head, txt_block=cfg.eval.txt_block, img_block=cfg.eval.img_block,
                                          precision=cfg.precision)
        open_set = lambda spec: itm_eval.open_retrieval_set(spec, img_rule(cfg))  # noqa: E731
        with torch.no_grad():
            if cfg.shortlist.enabled:
                rows = shortlist_rows(model, cfg.test_datasets, settings, cfg.shortlist, open_set)
                results = [{"setting": f"{setting} (shortlist + rerank)", "dataset": r["dataset"], "lang": r["lang"],
                            "name": r["name"], "metrics": r["metrics"]} for r in rows]
            else:
                results = itm_eval.evaluate_sets(model, cfg.test_datasets, settings, setting, open_set,
                                                 cfg.output_dir, cfg.eval.save_scores)
        table = itm_eval.write_results(cfg.output_dir, results)
        if cfg.shortlist.enabled:
            table += "\n" + write_shortlist(Path(cfg.output_dir), rows)
        if du.is_main():
            print(table, flush=True)
        return results
    finally:
        du.shutdown()


RETRIEVAL_RUN = register_run(RunSpec(
    name=TASK_NAME, config=RetrievalConfig,
    build_tasks=lambda cfg, ctx: [*([build_retrieval_task(cfg, ctx)] if cfg.rank_weight > 0 else []),
                                  *build_extra_tasks(cfg, ctx)],
    build_model=build_retrieval_model, finish=final_evaluation, evaluate=evaluate,
    lr_multipliers=lr_multipliers,
    best_metric=lambda cfg: f"{TASK_NAME}/r_mean" if cfg.val_datasets and cfg.rank_weight > 0 else None))
