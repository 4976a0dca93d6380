"""Run configs of retrieval fine-tuning (``train_itm.py``) and evaluation (``inf_itm.py``).

Language settings are data only: ``train_datasets`` lists (txt_db, img_db) pairs (English only, one
language, or all of them; they are merged and drawn in proportion to their sizes). Paths may hold
``${VAR}`` placeholders (e.g. ``${UC2_DEMO_DIR}`` set by ``scripts/run_demo.py``), expanded by
:func:`utils.config.load_config`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from utils.config import field
from utils.errors import ConfigError
from training.run_config import Precision, TrainConfig

@dataclass
class RetrievalSetSpec:
    """One retrieval split: a caption database and the image database its captions point to."""

    name: str = field(help="label used in logs, metric names and score files, e.g. 'multi30k_de'")
    txt_db: str = field(help="txt_db directory (NAME.db)")
    img_db: str = field(help="img_db directory (the image set folder holding feat_th*/ and nbb_*.json)")
    dataset: str = field("multi30k", help="table column group: 'multi30k' or 'mscoco' (or a demo name)")
    lang: str = field("en", help="caption language (table column)")
    coco_folds: int = field(0, help="evaluation: > 1 averages recall over this many image folds (COCO 1K: 5)")
    fold_file: str = field("", help="JSON {img_fname: fold id} (e.g. the Karpathy 1K folds); empty: "
                                    "consecutive blocks of the images in file-name order")

    def __post_init__(self) -> None:
        if self.coco_folds < 0 or self.coco_folds == 1:
            raise ConfigError(f"{self.name}.coco_folds: expected 0 (whole set) or >= 2 folds, got {self.coco_folds}")
        if self.fold_file and not self.coco_folds:
            raise ConfigError(f"{self.name}.fold_file: set coco_folds (the number of folds) as well")


@dataclass
class EvalOptions:
    """How the cross-encoder scores a test set (see evaluation/itm_eval.py)."""

    txt_block: int = field(8, help="captions per scoring batch block")
    img_block: int = field(64, help="images per scoring batch block (pairs per batch = txt_block * img_block)")
    save_scores: bool = field(True, help="write scores_{name}.npz (score matrix, caption ids, image names)")

    def __post_init__(self) -> None:
        if self.txt_block < 1 or self.img_block < 1:
            raise ConfigError(f"eval: txt_block ({self.txt_block}) and img_block ({self.img_block}) must be >= 1")


@dataclass
class ShortlistOptions:
    """Fast retrieval (evaluation/shortlist.py): the ``itc`` head shortlists, the cross-encoder reranks."""

    enabled: bool = field(False, help="evaluate with the shortlist (needs a model with the 'itc' head, from the "
                                      "'itc' task); after training: add the shortlist table when the model has one")
    k_img: int | None = field(None, help="images per caption scored by the cross-encoder (text->image); null: "
                                         "from the gallery size (k_fraction, k_max)")
    k_txt: int | None = field(None, help="captions per image scored by the cross-encoder (image->text); null: "
                                         "from the gallery size (k_fraction, k_max)")
    k_fraction: float = field(0.04, help="a k left null is this fraction of the query's gallery (the images, or "
                                         "the captions, of its fold), rounded down, at least 1, at most k_max: "
                                         "the cross-encoder then scores at most 2 * k_fraction of all pairs")
    k_max: int = field(256, help="upper bound of a k taken from k_fraction (large galleries)")
    below_shortlist: Literal["dual_encoder", "tied"] = field(
        "dual_encoder", help="order of the candidates outside a query's shortlist, all of them below its k "
                             "reranked ones: 'dual_encoder' (by the itc similarity) or 'tied' (one tie at the "
                             "bottom, counted against the positive)")
    backend: Literal["exact", "faiss"] = field("exact", help="k-NN: 'exact' (chunked matrix product) or "
                                                              "'faiss' (optional package faiss-cpu)")
    chunk: int = field(1024, help="queries per matrix-product chunk of the exact k-NN")
    embed_batch: int = field(64, help="captions or images per single-modality (ITC) pass")
    compare_exhaustive: bool = field(True, help="also score every pair (timed) for the exhaustive columns "
                                                "of the shortlist table")

    def __post_init__(self) -> None:
        for key in ("k_img", "k_txt"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"shortlist.{key}: expected >= 1, or null (from the gallery size), got {value}")
        for key in ("k_max", "chunk", "embed_batch"):
            if getattr(self, key) < 1:
                raise ConfigError(f"shortlist.{key}: expected >= 1, got {getattr(self, key)}")
        if not 0.0 < self.k_fraction <= 1.0:
            raise ConfigError(f"shortlist.k_fraction: expected a fraction in (0, 1], got {self.k_fraction}")
        if self.below_shortlist not in ("dual_encoder", "tied"):
            raise ConfigError(f"shortlist.below_shortlist: expected 'dual_encoder' or 'tied', got {self.below_shortlist!r}")
        if self.backend not in ("exact", "faiss"):
            raise ConfigError(f"shortlist.backend: expected 'exact' or 'faiss', got {self.backend!r}")


@dataclass
class RetrievalConfig(TrainConfig):
    """Retrieval fine-tuning (paper section 4 / released config), plus the final test evaluation."""

    learning_rate: float = field(1e-4, help="peak learning rate after warm-up")
    warmup_steps: int = field(5000, help="linear warm-up steps (released config: 5000; paper: 10 %)")
    num_train_steps: int = field(50000, help="optimizer steps (50k all-language, 30k English-only)")
    train_batch_size: int = field(40, help="positive pairs per GPU per micro-batch (each adds 2k negative rows)")
    valid_steps: int = field(2000, help="validate (recall on val_datasets) every this many steps (0: never)")
    save_steps: int = field(2000, help="checkpoint every this many optimizer steps (0: only at the end)")
    train_datasets: list[RetrievalSetSpec] = field(default_factory=list, help="training sets, merged")
    val_datasets: list[RetrievalSetSpec] = field(default_factory=list, help="validation sets (mean AR keeps the best)")
    test_datasets: list[RetrievalSetSpec] = field(default_factory=list, help="sets evaluated after training")
    setting: str = field("All-language fine-tune", help="row label of the results table")
    negative_size: int = field(1, help="k: negative images and negative captions per positive pair")
    margin: float = field(0.2, help="hinge margin between positive and negative scores")
    hard_neg_every: int = field(0, help="0: random negatives; n: every n-th batch mines hard negatives")
    hard_neg_pool: int = field(16, help="candidates per side scored when mining hard negatives")
    embeddings_lr_mult: float = field(1.0, help="learning-rate multiplier of roberta.embeddings (XLM-R text embeddings)")
    eval: EvalOptions = field(default_factory=EvalOptions, help="scoring of validation and test sets")
    results_dir: str = field("", help="where results.md/.json and score files go; empty: {output_dir}/results")
    tasks: list[dict[str, Any]] = field(default_factory=list, help="extra objectives mixed into the fine-tune on "
                                        "the training sets, e.g. [{'task': 'itc', 'batch_size': 32}]")
    mix_ratio: list[float] = field(default_factory=list, help="draw weight of each extra task (itm_rank: "
                                                              "rank_weight); empty: 1.0 each")
    rank_weight: float = field(1.0, help="draw weight of itm_rank; 0: do not train the cross-encoder, only the extra "
                                         "tasks (e.g. fit an ITC shortlist head onto a fine-tuned checkpoint)")
    shortlist: ShortlistOptions = field(default_factory=ShortlistOptions, help="fast retrieval in the test evaluation")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.train_datasets:
            raise ConfigError("train_datasets: expected at least one training set")
        if self.negative_size < 1:
            raise ConfigError(f"negative_size: expected >= 1, got {self.negative_size}")
        if self.hard_neg_every < 0 or (self.hard_neg_every and self.hard_neg_pool < self.negative_size):
            raise ConfigError(f"hard_neg_every/hard_neg_pool: expected hard_neg_every >= 0 and hard_neg_pool "
                              f">= negative_size ({self.negative_size}), got {self.hard_neg_every}/{self.hard_neg_pool}")
        if self.embeddings_lr_mult <= 0:
            raise ConfigError(f"embeddings_lr_mult: expected > 0, got {self.embeddings_lr_mult}")
        if self.mix_ratio and len(self.mix_ratio) != len(self.tasks):
            raise ConfigError(f"mix_ratio: {len(self.mix_ratio)} values for {len(self.tasks)} extra tasks")
        if any(not r > 0 for r in self.mix_ratio):
            raise ConfigError(f"mix_ratio: expected positive weights, got {self.mix_ratio}")
        if self.rank_weight < 0 or (self.rank_weight == 0 and not self.tasks):
            raise ConfigError(f"rank_weight: expected > 0, or 0 with extra tasks to train, got {self.rank_weight}")


@dataclass
class RetrievalEvalConfig:
    """Evaluation of one checkpoint on several test sets (``inf_itm.py``)."""

    output_dir: str = field(help="where results.md, results.json and the score files go")
    checkpoint: str = field(help="fine-tuned retrieval checkpoint, or a pretraining one for zero-shot")
    model_config: str = field("", help="model config JSON (UC2ModelConfig); empty: the default base model")
    test_datasets: list[RetrievalSetSpec] = field(default_factory=list, help="sets to evaluate, one table")
    head: Literal["auto", "rank", "itm"] = field(
        "auto", help="'rank' (fine-tuned), 'itm' (zero-shot ITM match score), 'auto': rank when the "
                     "checkpoint holds rank_output, else itm")
    setting: str = field("", help="row label of the table; empty: 'Zero-shot' for itm, 'Fine-tuned' for rank")
    precision: Precision = field("fp32", help="fp32, fp16 or bf16 autocast while scoring")
    conf_th: float = field(0.2, help="detector confidence threshold selecting regions")
    max_bb: int = field(100, help="most regions per image")
    min_bb: int = field(10, help="fewest regions per image")
    num_bb: int = field(36, help="fixed region count for feat_numbb{num_bb} image databases")
    eval: EvalOptions = field(default_factory=EvalOptions, help="scoring block sizes, score files")
    shortlist: ShortlistOptions = field(default_factory=ShortlistOptions, help="fast retrieval: shortlist + rerank")

    def __post_init__(self) -> None:
        if not self.test_datasets:
            raise ConfigError("test_datasets: expected at least one test set")
