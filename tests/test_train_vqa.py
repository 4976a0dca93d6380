"""End to end: train_vqa.py -> inf_vqa.py on a tiny synthetic VQA corpus (2-layer, 32-wide model, CPU).

The corpus: each image's regions carry its colour as a one-hot feature; every question asks for the
colour. Colours are unbalanced (majority baseline about 40 %), so a model that reads the image beats the
baseline by a wide margin. The validation split holds one question whose answers are all outside the
vocabulary, which must be counted and scored 0.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from utils.errors import DataError
from data.img_db import ImgDbWriter
from data.txt_db import TxtDbWriter

COLOURS = ("red", "blue", "green", "yellow")
COLOUR_P = (0.4, 0.2, 0.2, 0.2)
FEAT_DIM = 8
META = {"CLS": 0, "SEP": 2, "MASK": 99, "v_range": [5, 99], "task": "vqa", "num_answers": len(COLOURS)}
ANS2LABEL = {c: i for i, c in enumerate(COLOURS)}
TINY_MODEL = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 64, "max_position_embeddings": 64, "img_dim": FEAT_DIM, "img_label_dim": 5}


def _image_arrays(colour: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = int(rng.integers(3, 6))
    feats = rng.normal(0, 0.1, size=(n, FEAT_DIM)).astype(np.float32)
    feats[:, colour] += 1.0
    x1 = rng.uniform(0, 0.5, size=(n, 1))
    y1 = rng.uniform(0, 0.5, size=(n, 1))
    bb = np.concatenate([x1, y1, x1 + 0.3, y1 + 0.3, np.full((n, 2), 0.3)], axis=1).astype(np.float32)
    return {"features": feats, "norm_bb": bb, "conf": np.full((n, 1), 0.9, dtype=np.float32)}


def _target(answers: list[str]) -> dict:
    counts = {a: answers.count(a) for a in set(answers) if a in ANS2LABEL}
    labels = sorted(ANS2LABEL[a] for a in counts)
    inv = {v: k for k, v in ANS2LABEL.items()}
    return {"labels": labels, "scores": [min(1.0, round(0.3 * counts[inv[lab]], 1)) for lab in labels]}


def write_vqa_corpus(root: Path, n_train: int = 96, n_val: int = 24, seed: int = 0) -> dict[str, Path]:
    """Write img_db ``root/img`` and txt_dbs ``root/train.db``, ``root/val.db`` (val ends with one question
    whose 10 answers are all 'purple', outside the vocabulary)."""
    rng = np.random.default_rng(seed)
    colours = rng.choice(len(COLOURS), size=n_train + n_val, p=COLOUR_P)
    with ImgDbWriter(root / "img", conf_th=0.2, max_bb=100, min_bb=1) as writer:
        for i, colour in enumerate(colours):
            writer.add(f"img_{i:04d}.npz", _image_arrays(int(colour), rng))
    paths = {"img": root / "img"}
    for split, idx in (("train", range(n_train)), ("val", range(n_train, n_train + n_val))):
        paths[split] = root / f"{split}.db"
        with TxtDbWriter(paths[split], META) as writer:
            for i in idx:
                answers = [COLOURS[colours[i]]] * 9 + [COLOURS[(colours[i] + 1) % 4]]
                writer.add(str(1000 + i), {"input_ids": [10, 11, 12 + i % 3], "img_fname": f"img_{i:04d}.npz",
                                           "question_id": str(1000 + i), "answers": answers,
                                           "target": _target(answers), "lang": "en"})
            if split == "val":
                writer.add("9999", {"input_ids": [10, 11, 12], "img_fname": "img_0000.npz", "question_id": "9999",
                                    "answers": ["purple"] * 10, "target": {"labels": [], "scores": []},
                                    "lang": "en"})
            writer.add_json("ans2label.json", ANS2LABEL)
    return paths


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vqa_corpus")
    paths = write_vqa_corpus(root)
    (root / "model.json").write_text(json.dumps(TINY_MODEL))
    paths["model"] = root / "model.json"
    return paths


def train_args(corpus: dict[str, Path], out: Path, steps: int = 60, **extra: str) -> list[str]:
    opts = {"output_dir": str(out), "model_config": str(corpus["model"]),
            "train_txt_dbs": json.dumps([str(corpus["train"])]), "train_img_dbs": json.dumps([str(corpus["img"])]),
            "val_txt_db": str(corpus["val"]), "min_bb": "1", "num_train_steps": str(steps), "warmup_steps": "4",
            "learning_rate": "5e-3", "lr_mul": "2", "train_batch_size": "256", "val_batch_size": "512",
            "gradient_accumulation_steps": "1", "valid_steps": str(steps // 2), "save_steps": str(steps),
            "log_steps": "4", "n_workers": "0", "dropout": "0.0", "seed": "3", "weight_decay": "0.0", **extra}
    return [arg for key, value in opts.items() for arg in (f"--{key}", value)]


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> tuple[Path, dict]:
    import train_vqa

    out = tmp_path_factory.mktemp("vqa_run") / "run"
    metrics = train_vqa.main(train_args(corpus, out))
    return out, metrics


def _logged_losses(run_dir: Path) -> list[float]:
    text = (run_dir / "log.txt").read_text(encoding="utf-8")
    return [float(v) for v in re.findall(r"loss/vqa=([0-9.e+-]+)", text)]


def test_training_loss_falls_and_validation_beats_majority(trained):
    run_dir, metrics = trained
    losses = _logged_losses(run_dir)
    assert len(losses) == 15
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2])
    # 24 answerable questions (9 of 10 annotators agree: score 1.0 when right) + 1 all-OOV question that
    # always scores 0, so 96 is the ceiling; always answering "red" scores about 40.
    assert metrics["vqa/n_questions"] == 25 and metrics["vqa/n_no_target"] == 1
    assert 80.0 < metrics["vqa/vqa_score"] <= 96.0
    assert 80.0 < metrics["vqa/accuracy"] <= 96.0


def test_run_dir_holds_vocab_majority_and_checkpoints(trained):
    run_dir, _ = trained
    assert json.loads((run_dir / "label2ans.json").read_text()) == list(COLOURS)
    assert json.loads((run_dir / "ans2label.json").read_text()) == ANS2LABEL
    assert json.loads((run_dir / "majority_answer.json").read_text())["answer"] == "red"
    assert (run_dir / "ckpt" / "model_best.pt").is_file()
    assert (run_dir / "ckpt" / "model_step_60.pt").is_file()


def test_inference_writes_submission_and_scores(trained, corpus, tmp_path, capsys):
    import inf_vqa

    run_dir, metrics = trained
    out = tmp_path / "pred_val.json"
    result = inf_vqa.main(["--run_dir", str(run_dir), "--txt_db", str(corpus["val"]), "--output", str(out),
                           "--img_db", str(corpus["img"]), "--dataset", "synthetic"])
    preds = json.loads(out.read_text())
    assert len(preds) == 25 and all(set(p) == {"question_id", "answer"} for p in preds)
    assert [p["question_id"] for p in preds[:2]] == [1096, 1097]  # numeric ids as integers, txt_db order
    assert {p["answer"] for p in preds} <= set(COLOURS)
    m = result["metrics"]
    assert m["n_questions"] == 25 and m["n_no_target"] == 1 and m["n_unannotated"] == 0
    assert m["vqa_score"] > m["majority_vqa_score"] + 25.0
    assert m["accuracy"] > m["majority_accuracy"] + 25.0
    assert "bleu" not in m  # English: no character BLEU unless asked
    saved = json.loads(out.with_name("pred_val.scores.json").read_text())
    assert saved["metrics"]["vqa_score"] == pytest.approx(m["vqa_score"])
    printed = capsys.readouterr().out
    assert "1 with every gold answer outside the answer vocabulary" in printed and "| synthetic |" in printed


def test_inference_character_bleu_for_japanese(trained, corpus, tmp_path):
    import inf_vqa

    run_dir, _ = trained
    out = tmp_path / "pred.json"
    result = inf_vqa.main(["--run_dir", str(run_dir), "--txt_db", str(corpus["val"]), "--output", str(out),
                           "--img_db", str(corpus["img"]), "--lang", "ja"])  # 'auto' BLEU for ja questions
    m = result["metrics"]
    assert result["lang"] == "ja"
    # the majority answer 'red' matches no character of most golds; the trained model mostly matches exactly
    assert m["majority_bleu"] < m["bleu"] <= 100.0 and m["bleu"] > 50.0


def test_inference_unknown_answer_file_is_a_clear_error(trained, corpus, tmp_path):
    import inf_vqa

    run_dir, _ = trained
    missing = tmp_path / "nowhere" / "ans2label.json"
    with pytest.raises(DataError, match=r"ans2label file .*nowhere.* does not exist"):
        inf_vqa.main(["--run_dir", str(run_dir), "--txt_db", str(corpus["val"]), "--output",
                      str(tmp_path / "p.json"), "--ans2label", str(missing)])
    assert not (tmp_path / "p.json").exists()


def test_training_unknown_answer_file_is_a_clear_error(corpus, tmp_path):
    import train_vqa

    missing = tmp_path / "vocab.json"
    with pytest.raises(DataError, match=r"ans2label file .*vocab\.json does not exist"):
        train_vqa.main(train_args(corpus, tmp_path / "run", ans2label=str(missing)))
    assert not (tmp_path / "run").exists()


def test_score_counts_oov_and_target_only_questions_by_hand():
    import inf_vqa

    def row(label, labels, scores, answers):
        return {"label": label, "target_labels": labels, "target_scores": scores, "answers": answers}

    rows = [row(0, [0], [1.0], ["red"] * 10),          # right: 1.0
            row(1, [1, 0], [0.6, 0.3], []),             # no strings (original db): soft score 0.6 only
            row(2, [], [], ["purple"] * 10),            # every answer outside the vocabulary: 0
            row(3, [], [], [])]                         # unannotated (test split): not scored
    m = inf_vqa.score(rows, list(COLOURS), ANS2LABEL, bleu=False, majority="red")
    assert m["n_questions"] == 3 and m["n_no_target"] == 1 and m["n_unannotated"] == 1
    assert m["vqa_score"] == pytest.approx(100 * 1.6 / 3)
    assert m["majority_vqa_score"] == pytest.approx(100 * 1.3 / 3)
    assert m["accuracy"] == pytest.approx(50.0) and m["majority_accuracy"] == pytest.approx(50.0)
