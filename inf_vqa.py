"""VQA inference: answers for every question of a txt_db, in the VQA v2 submission format, plus scores.

Usage::

    python inf_vqa.py --run_dir /storage/vqa --txt_db /txt/vqa_devval.db --output /storage/vqa/devval.json
    torchrun --nproc_per_node 8 inf_vqa.py --run_dir ... (each rank predicts a share; rank 0 writes)

Writes ``OUTPUT`` = ``[{"question_id": ..., "answer": ...}, ...]`` in the txt_db's order (numeric question
ids become JSON integers, as the VQA v2 evaluation server expects). When the questions carry gold answers,
also writes ``OUTPUT`` with ``.scores.json`` in place of ``.json``: ``{setting, dataset, lang, metrics}``
(the row format of :mod:`evaluation.results_table`) with the VQA score, accuracy, character BLEU (Japanese /
Chinese, or ``--bleu on``), the majority-answer baseline beside them, and the counts. Questions whose gold
answers all lie outside the answer vocabulary score 0 and are counted (``n_no_target``), never dropped;
unannotated questions (a test split) are predicted but not scored (``n_unannotated``).

The model config, answer vocabulary, checkpoint, region rule and majority answer default to the files
``train_vqa.py`` left in ``--run_dir``; each can be given explicitly instead. Same as
``evaluate.py --task vqa`` (tasks/vqa.py; the scoring is in evaluation/vqa_metrics.py).
"""
from __future__ import annotations

from collections.abc import Sequence

import evaluate
from training.vqa_config import VQA_TASK_NAME


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Predict, write, score; returns the result row ``{setting, dataset, lang, metrics}`` (None if unscored)."""
    return evaluate.run(VQA_TASK_NAME, argv)


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
