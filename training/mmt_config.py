"""Run config of MMT / NMT fine-tuning and inference (``train_mmt.py``, ``inf_mmt.py``).

Defaults are the seed's fine-tuning recipe over a pretrained (V)TLM (MMT_FACTS §4): Adam (0.9, 0.999),
eps 1e-8, constant lr 1e-5, no weight decay, dropout 0.2, grad-norm clip 5, no label smoothing, validation
BLEU with beam search, early stopping after ``patience`` validations without a new best, best checkpoint
kept. ``config/mmt_scratch_recipe.json`` holds the from-scratch recipe (lr 1e-4, inverse-sqrt with 4000
warm-up steps, betas (0.9, 0.98), dropout 0.4).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from utils.config import ConfigError, field
from training.run_config import TrainConfig


@dataclass
class DegradeConfig:
    """Source degradation at train and test time (the seed's probes)."""

    mode: Literal["none", "words", "progressive"] = field("none", help="none, words (listed words), progressive")
    words: list[str] = field(default_factory=list, help="words mode: source words replaced by [MASK]")
    words_file: str = field("", help="words mode: file with one source word per line (added to words)")
    keep_first: int = field(0, help="progressive mode: leading source words kept")


@dataclass
class MmtConfig(TrainConfig):
    """Fine-tune an encoder-decoder for (multimodal) translation; the seed's fine-tuning recipe by default."""

    train_db: str = field("", help="parallel txt_db of the training split (prepro.py multi30k)")
    val_db: str = field("", help="parallel txt_db of the validation split (model selection)")
    test_dbs: dict[str, str] = field(default_factory=dict, help="test set name -> parallel txt_db (inf_mmt.py)")
    img_db: str = field("", help="img_db of all splits")
    src_lang: str = field("en", help="source language (a side of the parallel db, found by name)")
    tgt_lang: str = field("de", help="target language")
    use_images: bool = field(True, help="MMT (regions + text) if true, NMT (text only) if false")
    arch: Literal["xlm", "uc2"] = field("xlm", help="xlm: the seed's model (model_config); uc2: UC2/XLM-R backbone")
    init: Literal["checkpoint", "xlmr", "random"] = field(
        "checkpoint", help="checkpoint (VTLM-C/TLM or UC2 weights in `checkpoint`), xlmr (xlmr_dir), random")
    xlmr_dir: str = field("", help="Hugging Face XLM-R folder (init 'xlmr', arch uc2)")
    init_dec_from_enc: bool = field(True, help="decoder copied from the encoder, cross-attention from self-attention")
    beam_size: int = field(8, help="beam size of validation and inference (1 = greedy)")
    length_penalty: float = field(1.0, help="alpha: hypotheses ranked by sum log-prob / length ** alpha")
    patience: int = field(21, help="stop after this many validations without a new best BLEU (0: never)")
    degrade: DegradeConfig = field(default_factory=DegradeConfig, help="source degradation (train and test)")
    learning_rate: float = field(1e-5, help="the seed's fine-tuning lr (constant)")
    decay: Literal["linear", "invsqrt", "constant"] = field("constant", help="LR shape after warm-up")
    warmup_steps: int = field(0, help="linear warm-up steps")
    betas: tuple[float, float] = field((0.9, 0.999), help="Adam betas")
    adam_eps: float = field(1e-8, help="Adam epsilon")
    weight_decay: float = field(0.0, help="no weight decay in the seed")
    dropout: float = field(0.2, help="dropout (the seed's fine-tuning: 0.2)")
    max_txt_len: int = field(200, help="training drops examples with more tokens (both sides)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.src_lang == self.tgt_lang:
            raise ConfigError(f"src_lang and tgt_lang: expected two languages, got {self.src_lang!r} twice")
        if self.init == "checkpoint" and not self.checkpoint:
            raise ConfigError("checkpoint: init 'checkpoint' needs a weights file (or set init to xlmr/random)")
        if self.arch == "xlm" and not self.model_config:
            raise ConfigError("model_config: arch 'xlm' needs the XLM model config JSON")
        if self.beam_size < 1:
            raise ConfigError(f"beam_size: expected >= 1, got {self.beam_size}")
