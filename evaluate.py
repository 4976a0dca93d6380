#!/usr/bin/env python
"""Evaluate with any registered run task: ``python evaluate.py --task NAME [the task's arguments]``.

    python evaluate.py --task itm_rank --config config/itm_eval_table1.json --checkpoint ckpt/model_best.pt
    python evaluate.py --task vqa --run_dir /storage/vqa --txt_db /txt/vqa_devval.db --output devval.json

The arguments after ``--task`` are the task's own (``inf_itm.py`` / ``inf_vqa.py`` are this script with the
task fixed); ``python evaluate.py --task list`` lists the tasks that can be evaluated.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any


def run(task: str, argv: Sequence[str] | None = None) -> Any:
    """Run the evaluation of run task ``task`` on ``argv``; returns what the task's evaluation returns."""
    from tasks.registry import run_spec
    from utils.errors import ConfigError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    spec = run_spec(task)
    if spec.evaluate is None:
        raise ConfigError(f"--task {task}: this task has no evaluation entry")
    return spec.evaluate(sys.argv[1:] if argv is None else list(argv))


def main(argv: Sequence[str] | None = None) -> Any:
    from tasks.registry import known_runs, run_spec
    from train import split_task

    task, rest = split_task(sys.argv[1:] if argv is None else argv)
    if task == "list":
        print("\n".join(n for n in known_runs() if run_spec(n.split(" ")[0]).evaluate is not None))
        return None
    return run(task, rest)


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
