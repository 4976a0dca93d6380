#!/usr/bin/env python
"""Translate the test sets of a trained MMT/NMT run, score them, and run the probes.

    python inf_mmt.py --run RUN_DIR [--checkpoint RUN_DIR/ckpt/model_best.pt] [--out results.json]
        [--shuffles 5] [--lexicon lexicon.json] [--no_meteor] [--key value ...]

``evaluate.py --task mmt`` with the task fixed (tasks/translation_setup.py: ``evaluate_run``). The run's
``hps.json`` gives the data, languages, model and degradation; ``--key value`` overrides any of it (e.g.
``--degrade.mode words --degrade.words_file nouns.txt`` for a test-time-only degradation,
``--test_dbs.test2017 DB``). For each test set (``test_dbs``, else ``val_db``) it writes the hypotheses
(``RUN_DIR/hyp.{name}.txt``, in the data's order) and reports ``bleu_tok`` (the seed's definition),
``bleu_detok`` (sacreBLEU 13a, signature), chrF and METEOR where its jar runs; with ``--lexicon`` (JSON
{source word: [its translations]}) the accuracy of masked source words in the output; with
``--shuffles N`` the incongruent-image probe (BLEU with N random image permutations, Δ).
"""
from __future__ import annotations

from collections.abc import Sequence

import evaluate

TASK = "mmt"


def main(argv: Sequence[str] | None = None) -> dict:
    return evaluate.run(TASK, argv)


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
