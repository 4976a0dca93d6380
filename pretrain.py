#!/usr/bin/env python
"""UC2 pretraining: MLM, ITM, MRTM and VTLM (plus the MRC/MRFR ablations) mixed by ``mix_ratio``.

    python pretrain.py --config config/uc2_pretrain.json [--key value ...]
    torchrun --nproc_per_node 8 pretrain.py --config config/uc2_pretrain.json
    horovodrun -np 8 python pretrain.py --config config/uc2_pretrain.json

Same as ``train.py --task pretrain`` (the run spec is in tasks/build.py). The run directory
(``output_dir``) receives hps.json, model.json, log.txt, tb/ and ckpt/; the final weights are also
written as ``model_final.pt`` with the original UC2 key names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import train

TASK = "pretrain"


def build_trainer(cfg, callbacks: Sequence[Callable] = ()):
    """The :class:`training.trainer.Trainer` of a parsed ``PretrainConfig``, not trained yet."""
    from tasks.registry import run_spec

    return train.build_trainer(run_spec(TASK), cfg, callbacks)[0]


def main(argv: list[str] | None = None, callbacks: Sequence[Callable] = ()) -> Path:
    """Parse the command line (``argv``, default ``sys.argv[1:]``), train, write ``model_final.pt``."""
    return train.run(TASK, argv, callbacks)


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
