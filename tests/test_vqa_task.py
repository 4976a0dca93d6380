"""VQA task pieces on hand-made cases: soft targets, the scaled BCE, target checks, vocabulary checks,
validation statistics (all-OOV question counted as 0), the answer head's learning-rate multiple, config."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from utils.errors import DataError
from tasks.vqa import (VqaObjective, check_db_vocab, read_target, soft_target_matrix, vqa_bce_loss)
from model.config import UC2ModelConfig
from model.model import UC2ForVQA
from optim.adamw import build_optimizer
from optim.sched import build_scheduler, lr_factor
from utils.config import ConfigError, load_config
from training.vqa_config import VQAConfig

LABEL2ANS = ["red", "blue", "green", "yellow"]


def test_soft_target_matrix_places_scores_at_labels():
    targets = soft_target_matrix([[0, 2], [], [3]], [[0.3, 1.0], [], [0.6]], num_answers=4)
    expected = torch.tensor([[0.3, 0.0, 1.0, 0.0],
                             [0.0, 0.0, 0.0, 0.0],   # all answers outside the vocabulary: zero row
                             [0.0, 0.0, 0.0, 0.6]])
    assert targets.dtype == torch.float32
    assert torch.allclose(targets, expected)


def test_bce_is_mean_over_questions_of_per_answer_sum():
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    targets = torch.tensor([[1.0, 0.3], [0.0, 0.6]])

    def bce(x: float, t: float) -> float:  # -t log s(x) - (1 - t) log(1 - s(x))
        s = 1.0 / (1.0 + math.exp(-x))
        return -t * math.log(s) - (1 - t) * math.log(1 - s)

    per_question = [bce(2.0, 1.0) + bce(-1.0, 0.3), bce(0.0, 0.0) + bce(3.0, 0.6)]
    assert vqa_bce_loss(logits, targets).item() == pytest.approx(sum(per_question) / 2, rel=1e-6)
    assert vqa_bce_loss(logits, targets, reduction="sum").item() == pytest.approx(sum(per_question), rel=1e-6)
    with pytest.raises(ValueError, match="differ"):
        vqa_bce_loss(logits, targets[:, :1])


def test_read_target_checks_labels_against_the_vocabulary():
    where = "text db /x/vqa.db, key '7'"
    assert read_target({"target": {"labels": [1, 3], "scores": [0.3, 1.0]}}, 4, where) == ([1, 3], [0.3, 1.0])
    with pytest.raises(DataError, match=r"/x/vqa.db, key '7': answer label 4 outside .* 0..3"):
        read_target({"target": {"labels": [4], "scores": [1.0]}}, 4, where)
    with pytest.raises(DataError, match=r"key '7': expected a 'target' field"):
        read_target({"input_ids": [5]}, 4, where)
    with pytest.raises(DataError, match="2 labels but 1 scores"):
        read_target({"target": {"labels": [0, 1], "scores": [1.0]}}, 4, where)
    with pytest.raises(DataError, match=r"soft scores must lie in \[0, 1\]"):
        read_target({"target": {"labels": [0], "scores": [1.5]}}, 4, where)


def test_txt_db_built_with_another_vocabulary_is_refused(tmp_path):
    txt = SimpleNamespace(db_dir=tmp_path, meta={"num_answers": 4})
    (tmp_path / "ans2label.json").write_text(json.dumps({a: i for i, a in enumerate(LABEL2ANS)}))
    check_db_vocab(txt, LABEL2ANS)  # same vocabulary: accepted
    with pytest.raises(DataError, match=r"ans2label.json: differs from the answer vocabulary"):
        check_db_vocab(txt, ["blue", "red", "green", "yellow"])
    with pytest.raises(DataError, match=r"meta.json: num_answers is 4, but the answer vocabulary has 3"):
        check_db_vocab(txt, LABEL2ANS[:3])


class FixedLogits(nn.Module):
    """Stand-in model: returns preset (B, K) logits whatever the inputs."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, *args) -> torch.Tensor:
        return self.logits


def _example(labels, scores, answers, qid):
    return {"input_ids": torch.tensor([0, 7, 2]), "position_ids": torch.tensor([2, 3, 4]),
            "img_feat": torch.zeros(2, 4), "img_pos_feat": torch.zeros(2, 7), "target_labels": labels,
            "target_scores": scores, "answers": answers, "question_id": qid, "index": int(qid)}


def test_validation_counts_all_oov_question_as_zero():
    objective = VqaObjective(label2ans=LABEL2ANS)
    batch = objective.collate([
        _example([0], [1.0], ["red"] * 10, "0"),                      # predicted red: right
        _example([1, 2], [0.6, 1.0], ["green"] * 5 + ["blue"] * 2, "1"),  # predicted blue: score 0.6, wrong
        _example([], [], ["purple"] * 10, "2"),                        # all answers outside the vocabulary
    ])
    assert batch["targets"].shape == (3, 4) and batch["question_ids"] == ["0", "1", "2"]
    logits = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 0, 5.0]])
    stats = objective.eval_stats(FixedLogits(logits), batch)
    metrics = objective.finalize(stats)
    assert metrics["n_questions"] == 3 and metrics["n_no_target"] == 1
    assert metrics["vqa_score"] == pytest.approx(100 * (1.0 + 0.6 + 0.0) / 3)
    assert metrics["accuracy"] == pytest.approx(100 / 3)
    assert metrics["loss"] == pytest.approx(vqa_bce_loss(logits, batch["targets"]).item(), rel=1e-6)


def test_objective_needs_its_answer_vocabulary():
    from tasks.registry import get_task

    assert get_task("vqa") is VqaObjective
    with pytest.raises(ConfigError, match="needs its answer vocabulary"):
        VqaObjective()


def _cfg(**extra) -> VQAConfig:
    return VQAConfig(output_dir="out", train_txt_dbs=["t.db"], train_img_dbs=["img"], **extra)


def test_answer_head_gets_the_learning_rate_multiple():
    config = UC2ModelConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=20, img_dim=4, img_label_dim=3)
    model = UC2ForVQA(config, num_answers=5)
    cfg = _cfg(learning_rate=1e-4, warmup_steps=0, num_train_steps=10)
    optimizer = build_optimizer(model, cfg, cfg.lr_multipliers())
    build_scheduler(optimizer, cfg)  # sets each group's first-step LR
    lr_of = {name: g["lr"] for g in optimizer.param_groups for name in g["names"]}
    assert set(lr_of) == {name for name, _ in model.named_parameters()}
    head = {n: lr for n, lr in lr_of.items() if n.startswith("vqa_output.")}
    body = {n: lr for n, lr in lr_of.items() if not n.startswith("vqa_output.")}
    first = lr_factor(1, 0, 10)  # the schedule's factor for the first step (no warm-up: 0.9)
    assert len(head) == 6 and all(lr == pytest.approx(1e-3 * first) for lr in head.values())
    assert body and all(lr == pytest.approx(1e-4 * first) for lr in body.values())


def test_config_defaults_and_errors(tmp_path):
    cfg = _cfg()
    assert (cfg.learning_rate, cfg.lr_mul, cfg.grad_norm) == (5e-5, 10.0, 2.0)
    assert cfg.val_img() == "img" and cfg.img_db_for(0) == "img"
    with pytest.raises(ConfigError, match="train_txt_dbs: expected at least one"):
        VQAConfig(output_dir="out")
    with pytest.raises(ConfigError, match="train_img_dbs: expected 1 or 2 entries"):
        VQAConfig(output_dir="out", train_txt_dbs=["a", "b"], train_img_dbs=["x", "y", "z"])
    with pytest.raises(ConfigError, match="lr_mul: expected a positive"):
        _cfg(lr_mul=0.0)
    path = tmp_path / "vqa.json"
    path.write_text(json.dumps({"output_dir": "o", "train_txt_dbs": ["t"], "train_img_dbs": ["i"], "lr_mull": 2}))
    with pytest.raises(ConfigError, match="unknown config key 'lr_mull'; did you mean 'lr_mul'"):
        load_config(VQAConfig, path)


@pytest.mark.parametrize("name", ["vqa_v2", "vqa_vg_ja", "vqa_demo_en", "vqa_demo_ja"])
def test_shipped_configs_load(repo_root, name, monkeypatch):
    monkeypatch.setenv("UC2_DEMO_DIR", "/demo")
    cfg = load_config(VQAConfig, repo_root / "config" / f"{name}.json")
    assert cfg.lr_mul == 10.0 and cfg.val_txt_db
    assert all(p.startswith("/demo/" if "demo" in name else "/txt/") for p in cfg.train_txt_dbs)


def test_task_reads_prepro_built_txt_db(tmp_path):
    """The contract with data/prepro.py: a db built by build_vqa_db trains with soft targets, and a
    question whose answers are all outside the training vocabulary gets an all-zero target row."""
    import numpy as np

    from data.img_db import ImgDbWriter
    from data.prepro import build_vqa_db
    from tasks.vqa import build_vqa_task, load_label2ans
    from tests.helpers import make_tiny_tokenizer, write_jsonl
    from tests.test_train_vqa import _image_arrays

    rng = np.random.default_rng(0)
    with ImgDbWriter(tmp_path / "img", min_bb=1) as writer:
        for i in range(3):
            writer.add(f"im{i}.npz", _image_arrays(i, rng))
    rows = [{"question_id": str(i), "img_fname": f"im{i % 3}.npz", "lang": "en", "question": "a red car",
             "answers": ["red"] * 3 + ["blue"]} for i in range(5)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "val.jsonl", [{**rows[0], "answers": ["green"] * 10}])
    tok = make_tiny_tokenizer(tmp_path)
    build_vqa_db(tmp_path / "train.jsonl", tmp_path / "train.db", tok, img_db=tmp_path / "img", progress=False)
    build_vqa_db(tmp_path / "val.jsonl", tmp_path / "val.db", tok, ans2label=tmp_path / "train.db" / "ans2label.json",
                 img_db=tmp_path / "img", progress=False)
    label2ans = load_label2ans(tmp_path / "train.db" / "ans2label.json")
    assert label2ans == ["red", "blue"]
    cfg = VQAConfig(output_dir=str(tmp_path / "out"), train_txt_dbs=[str(tmp_path / "train.db")],
                    train_img_dbs=[str(tmp_path / "img")], val_txt_db=str(tmp_path / "val.db"), min_bb=1,
                    n_workers=0, train_batch_size=1000)
    task = build_vqa_task(cfg, label2ans)
    batch = next(iter(task.train_batches(0)))
    assert batch["input_ids"][0, 0].item() == 0 and torch.allclose(
        batch["targets"], torch.tensor([[0.9, 0.3]]).expand(5, 2))
    val = task.val_data.objective.collate([task.val_data[(0, 0)]])
    assert val["targets"].tolist() == [[0.0, 0.0]] and val["answers"] == [["green"] * 10]
