#!/usr/bin/env python
"""Dual-encoder training: a native English dual encoder, or MLA's language acquirers on a frozen one.

    python train_mla.py --config config/mla_demo_native.json          # English dual encoder (stage native)
    python train_mla.py --config config/mla_demo_nlt.json             # NLT: acquirers regress English features
    python train_mla.py --config config/mla_demo_le.json              # LE: from the NLT weights, image contrast
    torchrun --nproc_per_node 8 train_mla.py --config config/mla_cc300k_nlt.json
    python train.py --task mla --config config/mla_demo_nlt.json     # the same run through the one verb

Writes the run directory (hps.json, model.json, log.txt, ckpt/), ``model_final.pt`` (stage native: the whole
dual encoder; MLA stages: only the trained parts, θ_emb and acquirers, which ``acquisition.init_from`` of the
next stage reads), and the test table (``results/results.md``) through the project's retrieval metrics.
"""
from __future__ import annotations

from typing import Callable, Sequence


def main(argv: list[str] | None = None, callbacks: Sequence[Callable] = ()) -> str:
    """Train one stage and evaluate it; returns the results Markdown ('' without test sets). This is
    ``train.py --task mla`` (tasks/mla.py holds the run spec); ``callbacks`` go to the trainer."""
    import sys

    import train

    return train.run("mla", sys.argv[1:] if argv is None else argv, callbacks)


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
