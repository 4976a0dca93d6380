"""Run-config dataclasses: the common :class:`TrainConfig` and the pretraining :class:`PretrainConfig`.

Field names follow the original UNITER/UC2 JSON configs where a matching key exists, so their values carry
over through :func:`utils.config.adapt_original_config`. Fine-tuning configs subclass :class:`TrainConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from utils.config import field
from utils.errors import ConfigError

Precision = Literal["fp32", "fp16", "bf16"]


@dataclass
class TrainConfig:
    """Settings every training run shares (optimizer, schedule, precision, checkpoints, data limits)."""

    output_dir: str = field(help="run directory: hps.json, checkpoints under ckpt/, log.txt, tb/")
    seed: int = field(42, help="seed for model init, task draws and data order")
    precision: Precision = field("fp32", help="fp32, fp16 (autocast + GradScaler) or bf16 (autocast)")
    learning_rate: float = field(4e-5, help="peak learning rate after warm-up")
    betas: tuple[float, float] = field((0.9, 0.98), help="AdamW betas")
    adam_eps: float = field(1e-6, help="AdamW epsilon")
    weight_decay: float = field(0.01, help="AdamW weight decay (not on biases and LayerNorm weights)")
    warmup_steps: int = field(10000, help="linear warm-up steps")
    num_train_steps: int = field(200000, help="optimizer steps in total; linear decay reaches 0 here")
    decay: Literal["linear", "invsqrt", "constant"] = field("linear", help="LR shape after warm-up")
    grad_norm: float = field(5.0, help="clip the global gradient norm to this (<= 0: no clipping)")
    gradient_accumulation_steps: int = field(1, help="micro-batches summed per optimizer step")
    train_batch_size: int = field(10240, help="tokens per GPU per training micro-batch")
    val_batch_size: int = field(10240, help="tokens per GPU per validation batch")
    valid_steps: int = field(5000, help="validate every this many optimizer steps (0: never)")
    save_steps: int = field(5000, help="checkpoint every this many optimizer steps (0: only at the end)")
    keep_last: int = field(3, help="number of step checkpoints kept (older ones are deleted)")
    log_steps: int = field(100, help="log training scalars every this many optimizer steps")
    n_workers: int = field(2, help="data-loader worker processes per task")
    pin_mem: bool = field(True, help="pin host memory of batches (CUDA only)")
    resume: str = field("auto", help="'auto' (latest checkpoint in output_dir if any), 'none', or a path")
    dist_timeout_s: float = field(1800.0, help="seconds a collective may wait for a missing rank")
    dropout: float = field(0.1, help="dropout probability in the model")
    max_txt_len: int = field(60, help="training drops examples with more text tokens")
    conf_th: float = field(0.2, help="detector confidence threshold selecting regions")
    max_bb: int = field(100, help="most regions per image")
    min_bb: int = field(10, help="fewest regions per image")
    num_bb: int = field(36, help="fixed region count for feat_numbb{num_bb} image databases")
    model_config: str = field("", help="model config JSON (UC2ModelConfig); empty: the default base model")
    checkpoint: str = field("", help="initial weights (UC2 state dict); empty: none")
    tokenizer: str = field("", help="tokenizer directory (XLM-R sentencepiece); empty: default")

    def __post_init__(self) -> None:
        if self.gradient_accumulation_steps < 1:
            raise ConfigError(f"gradient_accumulation_steps: expected >= 1, got {self.gradient_accumulation_steps}")
        if self.num_train_steps < 1:
            raise ConfigError(f"num_train_steps: expected >= 1, got {self.num_train_steps}")
        if not 0 <= self.warmup_steps <= self.num_train_steps and self.decay == "linear":
            raise ConfigError(f"warmup_steps: expected 0..num_train_steps ({self.num_train_steps}), "
                              f"got {self.warmup_steps}")
        if self.keep_last < 1:
            raise ConfigError(f"keep_last: expected >= 1, got {self.keep_last}")


@dataclass
class DatasetSpec:
    """One training/validation source, with the original UNITER key names."""

    name: str = field(help="source name, e.g. 'coco_en'; task names are '{task}_{name}'")
    db: list[str] = field(help="txt_db directories")
    img: list[str] = field(help="img_db directories (one per db entry, or one for all)")
    tasks: list[str] = field(help="registered task names, e.g. ['itm', 'mlm', 'vmlm', 'tlm']")
    mix_ratio: list[float] = field(default_factory=list, help="draw weight per task (same length as tasks)")

    def __post_init__(self) -> None:
        if self.mix_ratio and len(self.mix_ratio) != len(self.tasks):
            raise ConfigError(f"dataset '{self.name}': mix_ratio has {len(self.mix_ratio)} values for "
                              f"{len(self.tasks)} tasks")
        if len(self.img) not in (1, len(self.db)):
            raise ConfigError(f"dataset '{self.name}': expected 1 or {len(self.db)} img entries, got {len(self.img)}")


@dataclass
class EarlyAdaptationConfig:
    """Early Adaptation: warm up img_linear towards the word embeddings of the detector classes."""

    init_from: str = field("", help="img_linear weights from an earlier EA run; skips EA training when set")
    num_train_steps: int = field(0, help="EA optimizer steps (0: no EA)")
    learning_rate: float = field(1e-4, help="EA learning rate")
    top_k: int = field(5, help="detector classes per region used as targets")


@dataclass
class PretrainConfig(TrainConfig):
    """UC2 pretraining: mixed tasks over caption and paired-translation sources."""

    train_datasets: list[DatasetSpec] = field(default_factory=list, help="training sources and their tasks")
    val_datasets: list[DatasetSpec] = field(default_factory=list, help="validation sources")
    mask_prob: float = field(0.15, help="masking probability for text tokens and regions (orig. mrm_prob)")
    itm_neg_prob: float = field(0.5, help="probability that ITM swaps in a random image")
    vtlm_mask_mode: Literal["mix", "full"] = field("mix", help="VTLM: 'mix' = 50% co-masked, 'full' = all")
    label_dir: str = field("", help="MRTM files: object vocabulary translated per language")
    xlmr_dir: str = field("", help="Hugging Face XLM-R folder used to initialise the model (optional)")
    early_adaptation: EarlyAdaptationConfig | None = field(None, help="Early Adaptation settings (optional)")
