"""Run config of VQA fine-tuning (``train_vqa.py``) and its defaults from the fine-tuning recipe.

Key names follow the original UNITER VQA config where one exists (``train_txt_dbs``, ``train_img_dbs``,
``val_txt_db``, ``val_img_db``, ``lr_mul``), so such a config carries over through
:func:`utils.config.adapt_original_config`. Defaults that differ from :class:`TrainConfig` are the
fine-tuning ones (UC2 paper section 4 / UNITER's VQA config): lr 5e-5 with the answer head at 10x,
600 warm-up of 6000 steps, gradient clipping at 2.0.

Paths in config files may hold ``${VAR}`` placeholders (e.g. ``${UC2_DEMO_DIR}``, set by
``scripts/run_demo.py``); :func:`utils.config.load_config` expands them.
"""
from __future__ import annotations

from dataclasses import dataclass

from utils.config import field
from utils.errors import ConfigError
from training.run_config import TrainConfig

#: Name of the one VQA task in the trainer, and prefix of its validation metrics (``vqa/vqa_score``).
VQA_TASK_NAME = "vqa"


@dataclass
class VQAConfig(TrainConfig):
    """VQA fine-tuning: one task, soft-score BCE over an answer vocabulary, answer head at ``lr_mul``."""

    # --- recipe defaults that differ from pretraining
    learning_rate: float = field(5e-5, help="peak learning rate of the backbone after warm-up")
    warmup_steps: int = field(600, help="linear warm-up steps")
    num_train_steps: int = field(6000, help="optimizer steps in total; linear decay reaches 0 here")
    grad_norm: float = field(2.0, help="clip the global gradient norm to this (<= 0: no clipping)")
    gradient_accumulation_steps: int = field(5, help="micro-batches summed per optimizer step")
    train_batch_size: int = field(5120, help="tokens per GPU per training micro-batch")
    val_batch_size: int = field(10000, help="tokens per GPU per validation batch")
    valid_steps: int = field(500, help="validate every this many optimizer steps (0: never)")
    save_steps: int = field(500, help="checkpoint every this many optimizer steps (0: only at the end)")
    # --- data
    train_txt_dbs: list[str] = field(default_factory=list, help="VQA txt_db directories for training")
    train_img_dbs: list[str] = field(default_factory=list,
                                     help="img_db directories (one per train_txt_dbs entry, or one for all)")
    val_txt_db: str = field("", help="VQA txt_db for validation during training (empty: no validation)")
    val_img_db: str = field("", help="img_db of the validation split (empty: the first train_img_dbs entry)")
    ans2label: str = field("", help="answer vocabulary {answer: label} JSON; empty: ans2label.json of the "
                                    "first train txt_db")
    # --- optimisation
    lr_mul: float = field(10.0, help="learning-rate multiple of the answer head vqa_output (10 in the recipe)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.train_txt_dbs:
            raise ConfigError("train_txt_dbs: expected at least one VQA txt_db directory, got none")
        if len(self.train_img_dbs) not in (1, len(self.train_txt_dbs)):
            raise ConfigError(f"train_img_dbs: expected 1 or {len(self.train_txt_dbs)} entries (one per "
                              f"train_txt_dbs entry), got {len(self.train_img_dbs)}")
        if not self.lr_mul > 0:
            raise ConfigError(f"lr_mul: expected a positive learning-rate multiple, got {self.lr_mul}")

    def img_db_for(self, index: int) -> str:
        """The img_db paired with ``train_txt_dbs[index]``."""
        return self.train_img_dbs[index if len(self.train_img_dbs) > 1 else 0]

    def val_img(self) -> str:
        """The img_db of the validation split."""
        return self.val_img_db or self.train_img_dbs[0]

    def lr_multipliers(self) -> dict[str, float]:
        """Parameter-name prefix -> LR multiple, for :func:`optim.adamw.build_optimizer`."""
        return {"vqa_output": self.lr_mul}
