"""A tiny corpus every registered task can train on, and the tiny run config of a task over it.

One txt_db whose examples carry the fields of every shipped task (caption ``input_ids``/``img_fname``/
``lang``, VTLM's paired fields, VQA's ``target``/``answers``/``question_id``), one img_db with soft labels,
MRTM class-word files and a tiny model config. Used by tests/test_task_contract.py and
tests/test_toy_task.py (imported, and run as a script by the 2-rank contract check).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from data.txt_db import TxtDbWriter
from model.config import UC2ModelConfig
from tests.test_tasks import CLASSES, DE_WORDS, EN_WORDS, FEAT_DIM, MASK, META, VOCAB, PieceTokenizer, write_img_db

ANSWERS = ["rot", "blau", "zwei", "drei"]
N_EXAMPLES, N_IMAGES = 24, 6


def _example(i: int, rng: np.random.Generator) -> dict[str, Any]:
    en, de = rng.integers(5, 100, size=6).tolist(), rng.integers(5, 100, size=5).tolist()
    label = i % len(ANSWERS)
    return {"input_ids": rng.integers(5, 100, size=int(rng.integers(3, 10))).tolist(),
            "img_fname": f"img_{i % N_IMAGES}.npz", "lang": "de",
            "input_ids_lang1": en, "input_ids_lang2": de,
            "word2ids_lang1": [[0], [1, 2], [3], [4, 5]], "word2ids_lang2": [[0], [1], [2, 3], [4]],
            "lang1_lang2_walign": {0: [0], 1: [2], 3: [1, 3]},
            "target": {"labels": [label], "scores": [1.0]}, "answers": [ANSWERS[label]] * 3,
            "question_id": str(i)}


def write_task_corpus(root: Path) -> dict[str, str]:
    """The corpus under ``root``; returns the paths a tiny task config needs (see :func:`task_config`)."""
    root.mkdir(parents=True, exist_ok=True)
    write_img_db(root / "imgs", n_images=N_IMAGES)
    db = root / "all.db"
    rng = np.random.default_rng(0)
    meta = {**META, "lang": "de", "lang1": "en", "lang2": "de", "num_answers": len(ANSWERS)}
    with TxtDbWriter(db, meta) as writer:
        for i in range(N_EXAMPLES):
            writer.add(str(i), _example(i, rng))
    (db / "ans2label.json").write_text(json.dumps({a: i for i, a in enumerate(ANSWERS)}), encoding="utf-8")
    labels = root / "labels"
    labels.mkdir(exist_ok=True)
    (labels / "objects_vocab_en.txt").write_text("\n".join(EN_WORDS) + "\n", encoding="utf-8")
    (labels / "objects_vocab_de.txt").write_text("\n".join(DE_WORDS) + "\n", encoding="utf-8")
    UC2ModelConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                   max_position_embeddings=80, img_dim=FEAT_DIM, img_label_dim=CLASSES,
                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).to_json(root / "model.json")
    xlm = {"architecture": "xlm", "dim": 32, "n_layers": 2, "n_heads": 4, "ffn_dim": 64, "dropout": 0.0,
           "attention_dropout": 0.0, "max_positions": 80, "langs": ["de", "en"], "box_dim": 4,
           "visual_dropout": 0.0}
    (root / "xlm_model.json").write_text(json.dumps(xlm), encoding="utf-8")
    return {"root": str(root), "txt_db": str(db), "img_db": str(root / "imgs"), "label_dir": str(labels),
            "model_config": str(root / "model.json"), "xlm_model_config": str(root / "xlm_model.json"),
            "output_dir": str(root / "run")}


def task_config(name: str, paths: dict[str, str], n_workers: int = 0) -> Any:
    """The tiny run config of registered task ``name``: a one-dataset pretraining config listing it, or
    the task's own ``example_config(paths)`` for a run task."""
    from tasks.registry import PRETRAIN, task_spec
    from training.run_config import DatasetSpec, PretrainConfig

    spec = task_spec(name)
    if spec.example_config is not None:  # the task's own tiny config (run tasks; tasks on another model)
        cfg = spec.example_config(paths)
    elif PRETRAIN not in spec.places:
        raise AssertionError(f"task {name!r}: give its register_task an example_config (tiny config over "
                             f"the contract corpus, see tests/_task_corpus.py) so the contract test covers it")
    else:
        data = dict(name="all", db=[paths["txt_db"]], img=[paths["img_db"]], tasks=[{"task": name}])
        cfg = PretrainConfig(output_dir=paths["output_dir"], train_datasets=[DatasetSpec(**data)],
                             val_datasets=[DatasetSpec(**data)], label_dir=paths["label_dir"],
                             model_config=paths["model_config"], train_batch_size=120,
                             val_batch_size=200)
    cfg.n_workers, cfg.pin_mem, cfg.seed, cfg.dropout = n_workers, False, 7, 0.0
    return cfg


def build_task(name: str, paths: dict[str, str], n_workers: int = 0, rank: int = 0, world_size: int = 1):
    """(task, model, cfg) of registered task ``name`` on the corpus: the task built by its builder, the
    model by its run spec when it has one (else the UC2 backbone with the heads the task declares)."""
    import torch

    from model.model import UC2WithHeads
    from model.xlm import XlmModel, is_xlm_config_file, resolve_xlm_config
    from tasks.context import run_context
    from tasks.registry import RUN, run_spec, task_spec
    from training.setup import resolve_model_config

    spec, cfg = task_spec(name), task_config(name, paths, n_workers)
    ctx = run_context(cfg, PieceTokenizer(), rank, world_size)
    if RUN in spec.places:
        tasks = run_spec(name).build_tasks(cfg, ctx)
        torch.manual_seed(0)
        model = run_spec(name).build_model(cfg, ctx, tasks)[0]
    else:
        from tasks.build import build_pretrain_tasks

        tasks = build_pretrain_tasks(cfg, ctx=ctx)
        img = ctx.img_db(paths["img_db"])
        torch.manual_seed(0)
        if is_xlm_config_file(cfg.model_config):
            config = resolve_xlm_config(cfg.model_config, vocab_size=VOCAB, pad_index=1, mask_index=MASK,
                                        img_dim=img.feat_dim, num_classes=img.label_dim, dropout=0.0)
            return tasks[0], XlmModel(config), cfg
        model = UC2WithHeads(resolve_model_config(cfg, img.feat_dim, img.label_dim), tasks[0].heads,
                             fresh=tasks[0].heads)
    return tasks[0], model, cfg


def validate_all(paths: dict[str, str], out: Path) -> None:
    """Every registered task's validation metrics on this rank's share (rank 0 writes them to ``out``)."""
    import torch

    from tasks.registry import task_specs
    from utils import distributed as du

    torch.set_num_threads(1)
    du.init_distributed(timeout_s=120)
    try:
        metrics = {}
        for name in sorted(task_specs()):
            task, model, _ = build_task(name, paths, rank=du.get_rank(), world_size=du.get_world_size())
            metrics[name] = task.validate(model.eval())
        if du.is_main():
            out.write_text(json.dumps(metrics), encoding="utf-8")
    finally:
        du.shutdown()


if __name__ == "__main__":  # python tests/_task_corpus.py PATHS_JSON OUT_JSON, one process per rank
    import sys

    validate_all(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")), Path(sys.argv[2]))
