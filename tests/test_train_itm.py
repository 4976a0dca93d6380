"""train_itm.py -> inf_itm.py end to end on tiny synthetic databases, and the shipped configs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import inf_itm
import train_itm
from data.img_db import ImgDbWriter
from data.txt_db import TxtDbWriter
from model.config import UC2ModelConfig
from model.model import UC2ForPretraining
from utils.config import ConfigError, load_config
from training.itm_config import RetrievalConfig, RetrievalEvalConfig

IMG_DIM = 8
N_TOPICS = 10
META = {"CLS": 0, "SEP": 2, "MASK": 39, "v_range": [5, 39]}


def write_split(root: Path, split: str, lang: str, imgs_per_topic: int, caps: int, seed: int) -> Path:
    """A txt_db whose captions start with their image's topic word (word id depends on ``lang``)."""
    rng = np.random.default_rng(seed)
    db = root / f"cap_{lang}_{split}.db"
    offset = {"en": 5, "de": 20}[lang]
    with TxtDbWriter(db, META) as w:
        for topic in range(N_TOPICS):
            for k in range(imgs_per_topic):
                for c in range(caps):
                    ids = [offset + topic, *rng.integers(30, 39, size=rng.integers(1, 3)).tolist()]
                    w.add(f"{lang}_{split}_{topic}_{k}_{c}", {"input_ids": ids, "img_fname": f"{split}_{topic}_{k}.npz"})
    return db


def write_images(root: Path, imgs_per_topic: dict[str, int]) -> Path:
    """Image features = the topic's prototype + noise, 3..5 boxes each."""
    rng = np.random.default_rng(0)
    protos = rng.normal(size=(N_TOPICS, IMG_DIM)).astype(np.float32) * 2
    img_dir = root / "imgs"
    with ImgDbWriter(img_dir) as w:
        for split, per in imgs_per_topic.items():
            for topic in range(N_TOPICS):
                for k in range(per):
                    n = int(rng.integers(3, 6))
                    feats = protos[topic] + rng.normal(size=(n, IMG_DIM)).astype(np.float32) * 0.3
                    w.add(f"{split}_{topic}_{k}.npz", {"features": feats,
                                                       "norm_bb": rng.uniform(size=(n, 6)).astype(np.float32),
                                                       "conf": np.full((n, 1), 0.9, np.float32)})
    return img_dir


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("itm_corpus")
    dbs = {f"{lang}_{split}": write_split(root, split, lang, per, 2, seed=i)
           for i, (lang, split, per) in enumerate([("en", "train", 3), ("en", "test", 1), ("de", "test", 1)])}
    dbs["img"] = write_images(root, {"train": 3, "test": 1})
    cfg = UC2ModelConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=40, img_dim=IMG_DIM, img_label_dim=5,
                         initializer_range=0.3)
    torch.manual_seed(0)
    pre = UC2ForPretraining(cfg)
    with torch.no_grad():  # "pretraining" taught that word 5+t and word 20+t mean the same topic t
        emb = pre.roberta.embeddings.word_embeddings.weight
        emb[20:30] = emb[5:15]
    dbs["model_config"] = root / "model.json"
    cfg.to_json(dbs["model_config"])
    dbs["checkpoint"] = root / "pretrain.pt"
    torch.save(pre.state_dict(), dbs["checkpoint"])
    return dbs


def spec(corpus, key: str, name: str) -> str:
    lang = key.split("_")[0]
    return json.dumps({"name": name, "txt_db": str(corpus[key]), "img_db": str(corpus["img"]),
                       "dataset": "demo", "lang": lang})


@pytest.mark.slow  # ~15 s alone, twice that on a busy 2-core machine
def test_fine_tune_then_evaluate_end_to_end(corpus, tmp_path):
    out = tmp_path / "run"
    table = train_itm.main([
        "--output_dir", str(out), "--model_config", str(corpus["model_config"]),
        "--checkpoint", str(corpus["checkpoint"]), "--n_workers", "0", "--pin_mem", "false",
        "--train_datasets", f"[{spec(corpus, 'en_train', 'en_train')}]",
        "--val_datasets", f"[{spec(corpus, 'en_test', 'en_val')}]",
        "--test_datasets", f"[{spec(corpus, 'en_test', 'en_test')}, {spec(corpus, 'de_test', 'de_test')}]",
        "--num_train_steps", "150", "--warmup_steps", "10", "--learning_rate", "1e-3", "--dropout", "0.0",
        "--train_batch_size", "8", "--valid_steps", "75", "--save_steps", "150", "--log_steps", "25",
        "--setting", "English-only fine-tune", "--eval.img_block", "4"])
    losses = [float(v) for v in re.findall(r"loss/itm_rank=([0-9.e+-]+)", (out / "log.txt").read_text())]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
    assert (out / "ckpt" / "model_best.pt").is_file()
    results = json.loads((out / "results" / "results.json").read_text())
    ar = {row["lang"]: row["r_mean"] for row in results["detail"]}
    # 10 test images: a random ranking gets AR around 43; English transfers to German via the shared topics.
    assert ar["en"] > 75 and ar["de"] > 65, ar
    assert "English-only fine-tune" in table and (out / "results" / "scores_de_test.npz").is_file()

    # The fine-tuned checkpoint through inf_itm gives the same numbers; the zero-shot ITM head does worse.
    common = ["--model_config", str(corpus["model_config"]),
              "--test_datasets", f"[{spec(corpus, 'en_test', 'en_test')}]"]
    tuned = inf_itm.main(["--output_dir", str(tmp_path / "inf"), "--checkpoint",
                          str(out / "ckpt" / "model_best.pt"), *common])
    assert tuned[0]["metrics"]["r_mean"] == pytest.approx(ar["en"])
    zero = inf_itm.main(["--output_dir", str(tmp_path / "zero"), "--checkpoint", str(corpus["checkpoint"]), *common])
    assert zero[0]["setting"].startswith("Zero-shot") and zero[0]["metrics"]["r_mean"] < ar["en"]
    assert "Zero-shot" in (tmp_path / "zero" / "results.md").read_text()


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "config").glob("itm_*.json")),
                         ids=lambda p: p.name)
def test_shipped_configs_load(path, monkeypatch):
    monkeypatch.setenv("UC2_DEMO_DIR", "/tmp/demo_dir")
    cls = RetrievalEvalConfig if "eval" in path.name else RetrievalConfig
    cfg = load_config(cls, path)
    sets = cfg.test_datasets + (getattr(cfg, "train_datasets", []))
    assert sets and all("${" not in s.txt_db for s in sets)


def test_unset_placeholder_and_missing_training_sets_are_config_errors(monkeypatch, tmp_path):
    monkeypatch.delenv("UC2_NOPE", raising=False)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"output_dir": "/x", "train_datasets": [
        {"name": "en", "txt_db": "${UC2_NOPE}/cap.db", "img_db": "/img"}]}))
    with pytest.raises(ConfigError, match=r"train_datasets\[0\]\.txt_db.*UC2_NOPE.* not set"):
        load_config(RetrievalConfig, bad)
    bad.write_text(json.dumps({"output_dir": "/x"}))
    with pytest.raises(ConfigError, match="train_datasets: expected at least one"):
        load_config(RetrievalConfig, bad)


@pytest.mark.slow  # four short training runs
def test_stop_and_resume_equals_one_run(corpus, tmp_path):
    """6 steps, stop, resume to 12 gives the same weights as 12 steps in one go (hard negatives and
    dropout on)."""
    def run(out: Path, steps: int) -> None:
        train_itm.main([
            "--output_dir", str(out), "--model_config", str(corpus["model_config"]),
            "--checkpoint", str(corpus["checkpoint"]), "--n_workers", "0", "--pin_mem", "false",
            "--train_datasets", f"[{spec(corpus, 'en_train', 'en_train')}]", "--num_train_steps", "12",
            "--warmup_steps", "2", "--learning_rate", "1e-3", "--train_batch_size", "4", "--valid_steps", "0",
            "--save_steps", "6", "--log_steps", "6", "--hard_neg_every", "3", "--hard_neg_pool", "4",
            "--decay", "constant",  # the LR then does not depend on num_train_steps
            *(["--num_train_steps", str(steps)] if steps != 12 else [])])

    run(tmp_path / "one", 12)
    run(tmp_path / "two", 6)
    # The second leg changes only num_train_steps; the run dir refuses other config changes.
    hps = json.loads((tmp_path / "two" / "hps.json").read_text())
    hps["num_train_steps"] = 12
    (tmp_path / "two" / "hps.json").write_text(json.dumps(hps))
    run(tmp_path / "two", 12)
    one = torch.load(tmp_path / "one" / "ckpt" / "model_step_12.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "ckpt" / "model_step_12.pt", weights_only=True)
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one)
    start = torch.load(corpus["checkpoint"], weights_only=True)
    assert not torch.equal(one["roberta.pooler.dense.weight"], start["roberta.pooler.dense.weight"])


def test_embeddings_get_their_own_learning_rate(corpus):
    from optim.adamw import build_optimizer
    from utils.config import from_dict
    cfg = from_dict(RetrievalConfig, {"output_dir": "/x", "learning_rate": 1e-4, "embeddings_lr_mult": 0.1,
                                      "model_config": str(corpus["model_config"]),
                                      "train_datasets": [json.loads(spec(corpus, "en_train", "en"))]})
    model, _ = train_itm.build_model(cfg)
    groups = build_optimizer(model, cfg, train_itm.lr_multipliers(cfg)).param_groups
    lr_of = {name: g["lr"] for g in groups for name in g["names"]}
    assert lr_of["roberta.embeddings.word_embeddings.weight"] == pytest.approx(1e-5)
    assert lr_of["roberta.img_embeddings.img_linear.weight"] == pytest.approx(1e-4)
    assert lr_of["rank_output.weight"] == pytest.approx(1e-4)


@pytest.mark.slow  # two processes, gloo
@pytest.mark.multirank
def test_torchrun_two_ranks_cpu(corpus, tmp_path):
    """train_itm under torchrun (2 gloo ranks on CPU): trains, validates, and rank 0 writes the table."""
    import os
    import socket
    import subprocess
    import sys
    repo = Path(__file__).resolve().parents[1]
    with socket.socket() as sock:  # a free port, so parallel test runs do not collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(repo / "train_itm.py"), "--output_dir", str(out), "--model_config", str(corpus["model_config"]),
           "--checkpoint", str(corpus["checkpoint"]), "--n_workers", "0", "--pin_mem", "false",
           "--train_datasets", f"[{spec(corpus, 'en_train', 'en_train')}]",
           "--val_datasets", f"[{spec(corpus, 'en_test', 'en_val')}]",
           "--test_datasets", f"[{spec(corpus, 'de_test', 'de_test')}]", "--num_train_steps", "6",
           "--warmup_steps", "1", "--train_batch_size", "4", "--valid_steps", "3", "--save_steps", "6",
           "--log_steps", "3", "--hard_neg_every", "2", "--hard_neg_pool", "3"]
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("## Retrieval: Average Recall") == 1  # printed by rank 0 only
    assert json.loads((out / "ckpt" / "best.json").read_text())["metric"] == "itm_rank/r_mean"
    scores = np.load(out / "results" / "scores_de_test.npz", allow_pickle=False)
    assert scores["scores"].shape == (20, 10)
