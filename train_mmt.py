#!/usr/bin/env python
"""Fine-tune an encoder-decoder for multimodal (MMT) or text-only (NMT) translation.

    python train_mmt.py --config config/mmt_demo.json [--use_images false --output_dir ...]
    torchrun --nproc_per_node 8 train_mmt.py --config ...

``train.py --task mmt`` with the task fixed (run spec in tasks/translation_setup.py). Initialised from a
VTLM-C / TLM checkpoint (``arch`` xlm), a UC2 checkpoint or XLM-R weights (``arch`` uc2), or random; the
decoder from the same weights with cross-attention copied from self-attention. Validation BLEU (beam
search) picks ``ckpt/model_best.pt``; training stops after ``patience`` validations without a new best;
the run resumes from its latest checkpoint when started again.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import train

TASK = "mmt"


def main(argv: Sequence[str] | None = None, callbacks: Sequence[Callable] = ()) -> dict[str, float]:
    """Train; returns the last validation metrics (``{task}/bleu``, ``{task}/chrf``). ``callbacks`` go to the
    trainer (``cb(trainer)`` after every optimizer step)."""
    return train.run(TASK, argv, callbacks)


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
