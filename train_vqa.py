"""Fine-tune UC2 for VQA (VQA v2, Japanese VG-VQA, the demo corpus) with the shared trainer.

Usage::

    python train_vqa.py --config config/vqa_v2.json [--learning_rate 5e-5 --output_dir /storage/vqa ...]
    torchrun --nproc_per_node 8 train_vqa.py --config config/vqa_v2.json

Same as ``train.py --task vqa`` (the task and its run spec are in tasks/vqa.py). Starts from
``checkpoint`` (a pretraining or released UC2 state dict; ``vqa_output`` is freshly initialised) or from
random weights. The answer vocabulary is stored in the run directory as ``ans2label.json`` and
``label2ans.json`` beside ``ckpt/``, with ``majority_answer.json`` (the most common training answer, the
baseline ``inf_vqa.py`` prints). Validation (``val_txt_db``) reports ``vqa/vqa_score`` and
``vqa/accuracy``; ``ckpt/model_best.pt`` keeps the best VQA score.
"""
from __future__ import annotations

from collections.abc import Sequence

import train
from training.vqa_config import VQA_TASK_NAME


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Train; returns the last validation metrics (``vqa/vqa_score``, ``vqa/accuracy``, ...)."""
    return train.run(VQA_TASK_NAME, argv)


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
