"""Data integrity (issue 16): non-finite or overflowing features, truncated/corrupt LMDBs, databases that do not
fit the model or tokenizer, silent nonsense in configs and inputs, checkpoints of another model size; and the
new-user tools (tokenizer CLI, XLM-R stand-in from any JSONL field, what xlmr_to_uc2 reports missing).

Entry points run through ``training.setup.cli_outcome`` (what ``run_cli`` does for the scripts): each case
asserts the exit status, one ``error:`` line naming the file (and key), no traceback, and nothing written.
"""
from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

import prepro
import pretrain
from data.compat import check_img_db_width, check_txt_db_vocab
from utils.errors import DataError
from data.img_db import ImgDb, ImgDbWriter
from data.txt_db import TxtDb
from model.config import UC2ModelConfig
from model.model import UC2ForPretraining
from model.weights import load_uc2_checkpoint, save_uc2_state_dict
from scripts import convert_imgdir, make_tiny_xlmr, train_tokenizer, xlmr_to_uc2
from tests._bad_input_helpers import build_setup, copy_db, leftovers, pretrain_config, truncate, write_json
from training.setup import cli_outcome

IMG_SUB = "feat_th0.2_max100_min3"
NBB = "nbb_th0.2_max100_min3.json"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The demo corpus (``data/``) and a 1-layer, 32-wide XLM-R stand-in (``xlmr/``)."""
    return build_setup(tmp_path_factory.mktemp("integrity"))


@pytest.fixture(autouse=True)
def _demo_env(monkeypatch, root):
    monkeypatch.setenv("UC2_DEMO_DIR", str(root))


@pytest.fixture
def cfg(repo_root, tmp_path) -> dict:
    return pretrain_config(repo_root, tmp_path / "run")


def run_pretrain_cli(tmp_path: Path, cfg: dict, capsys, *argv: str) -> tuple[int, str]:
    """``pretrain.py --config`` as the script runs it: exit status and stderr."""
    path = write_json(tmp_path / "cfg.json", cfg)
    status = cli_outcome(lambda: pretrain.main(["--config", str(path), *argv]))
    return status, capsys.readouterr().err


def assert_one_line_error(status: int, err: str, *fragments: str) -> None:
    assert status == 1, err
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if line.startswith("error: "))
    missing = [f for f in fragments if f not in line]
    assert not missing, f"{missing} not in {line}"


def assert_no_run(tmp_path: Path) -> None:
    assert not (tmp_path / "run" / "ckpt").exists(), "a refused run must not train"
    assert not leftovers(tmp_path)


# ------------------------------------------------------------------------------------------ features
def _npz(path: Path, features: np.ndarray, **extra) -> Path:
    n = features.shape[0]
    arrays = {"features": features, "norm_bb": np.full((n, 6), 0.5, np.float32),
              "conf": np.linspace(0.9, 0.5, n, dtype=np.float32)[:, None],
              "soft_labels": np.full((n, 4), 0.25, np.float32)}
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def test_converter_drops_and_names_files_with_nan_inf_or_float16_overflow(tmp_path, capsys):
    src = tmp_path / "npz"
    src.mkdir()
    good = np.ones((4, 8), np.float32)
    _npz(src / "good.npz", good)
    _npz(src / "nan.npz", np.where(np.eye(4, 8) > 0, np.nan, good).astype(np.float32))
    _npz(src / "inf.npz", good, soft_labels=np.full((4, 4), np.inf, np.float32))
    _npz(src / "big.npz", good * 70000.0)
    out = tmp_path / "img"
    assert convert_imgdir.main(["--img_dir", str(src), "--output", str(out), "--min_bb", "1"]) == 0
    report = capsys.readouterr().out
    assert "converted 1 images" in report and "dropped 3 file(s)" in report
    assert "nan.npz: array 'features' holds 4 non-finite value(s) (NaN/Inf), first at index (0, 0)" in report
    assert "inf.npz: array 'soft_labels' holds 16 non-finite value(s)" in report
    assert "big.npz: array 'features' holds 32 value(s) beyond float16's range (|x| > 65504)" in report
    db = ImgDb(out, min_bb=1)
    assert db.names == ["good.npz"] and np.isfinite(db.get("good.npz")["features"]).all()


def test_converter_with_only_bad_files_writes_nothing(tmp_path, capsys):
    src = tmp_path / "npz"
    src.mkdir()
    _npz(src / "a.npz", np.full((3, 8), np.nan, np.float32))
    _npz(src / "b.npz", np.full((3, 8), -1e6, np.float32))
    out = tmp_path / "img"
    assert convert_imgdir.main(["--img_dir", str(src), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"error: {src}: none of the 2 .npz files is usable" in err and "a.npz" in err and "Traceback" not in err
    assert not list(out.glob("feat_*")) and not leftovers(tmp_path)


def test_img_db_writer_refuses_values_float16_cannot_hold(tmp_path):
    with pytest.raises(DataError, match=r"key 'x\.npz': entry 'features' holds 1 value\(s\) beyond float16"):
        with ImgDbWriter(tmp_path / "img") as writer:
            writer.add("x.npz", {"features": np.array([[1.0, 1e5]], np.float32),
                                 "norm_bb": np.zeros((1, 6), np.float32)})
    assert not (tmp_path / "img" / "feat_th0.2_max100_min10").exists() and not leftovers(tmp_path)


def test_nbb_file_with_zero_boxes_everywhere_is_refused(root, tmp_path, cfg, capsys):
    img = copy_db(root / "data" / "img_db" / "demo_imgs", tmp_path / "imgs")
    counts = json.loads((img / NBB).read_text())
    write_json(img / NBB, dict.fromkeys(counts, 0))
    with pytest.raises(DataError, match=rf"{img / NBB}: gives 0 boxes for every one of the {len(counts)} images"):
        ImgDb(img, min_bb=3)
    for spec in cfg["train_datasets"]:
        spec["img"] = [str(img)]
    status, err = run_pretrain_cli(tmp_path, cfg, capsys)
    assert_one_line_error(status, err, str(img / NBB), "0 boxes")
    assert_no_run(tmp_path)


# ------------------------------------------------------------------------------------------ LMDB files
@pytest.mark.parametrize("keep, expected", [
    (0.5, r"data.mdb is truncated \(\d+ bytes, the database needs \d+\)"),
    (0.8, r"data.mdb is truncated"),
    (0.001, r"cannot open \(.*File is not an LMDB file\)"),  # not even the meta pages are left
])
def test_truncated_lmdb_is_refused_on_open_not_with_sigbus(root, tmp_path, cfg, capsys, keep, expected):
    txt = copy_db(root / "data" / "txt_db" / "cap_en_train.db", tmp_path / "cap_en_train.db")
    truncate(txt / "data.mdb", keep)
    with pytest.raises(DataError, match=rf"{txt}: {expected}"):
        TxtDb(txt)
    cfg["train_datasets"][0]["db"] = [str(txt)]
    status, err = run_pretrain_cli(tmp_path, cfg, capsys)
    assert_one_line_error(status, err, str(txt))
    assert_no_run(tmp_path)


def test_truncated_img_lmdb_names_the_image_db(root, tmp_path):
    img = copy_db(root / "data" / "img_db" / "demo_imgs", tmp_path / "imgs")
    truncate(img / IMG_SUB / "data.mdb", 0.3)
    with pytest.raises(DataError, match=rf"{img / IMG_SUB}: data.mdb is truncated"):
        ImgDb(img, min_bb=3)


def test_lmdb_with_a_destroyed_header_names_the_db(root, tmp_path):
    img = copy_db(root / "data" / "img_db" / "demo_imgs", tmp_path / "imgs")
    data = bytearray((img / IMG_SUB / "data.mdb").read_bytes())
    data[:8192] = bytes(8192)
    (img / IMG_SUB / "data.mdb").write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"LMDB environment {img / IMG_SUB}: cannot open"):
        ImgDb(img, min_bb=3)


# ------------------------------------------------------------------------------------------ db vs model
def _edit_meta(db: Path, **changes) -> Path:
    meta = json.loads((db / "meta.json").read_text())
    meta.update(changes)
    write_json(db / "meta.json", meta)
    return db


@pytest.mark.parametrize("change, fragments", [
    ({"vocab_size": 250002}, ["tokenized with a vocabulary of 250002 ids", "but the model ("]),
    ({"MASK": 250001, "vocab_size": None}, ["token ids {'MASK': 250001} lie outside the", "vocabulary of the model"]),
    ({"SEP": 3, "UNK": 2}, ["special ids differ from tokenizer", "'SEP': (3, 2)"]),
])
def test_txt_db_of_another_tokenizer_is_refused_at_start(root, tmp_path, cfg, capsys, change, fragments):
    db = copy_db(root / "data" / "txt_db" / "cap_en_train.db", tmp_path / "cap_en_train.db")
    _edit_meta(db, **change)
    cfg["train_datasets"][0]["db"] = [str(db)]
    status, err = run_pretrain_cli(tmp_path, cfg, capsys)
    assert_one_line_error(status, err, str(db / "meta.json"), *fragments)
    assert_no_run(tmp_path)


def test_original_meta_without_vocab_size_is_checked_by_its_ids(root, tmp_path):
    db = _edit_meta(copy_db(root / "data" / "txt_db" / "cap_en_train.db", tmp_path / "x.db"), vocab_size=None)
    meta = json.loads((db / "meta.json").read_text())
    check_txt_db_vocab(TxtDb(db), meta["MASK"] + 1, "model A")  # fits: the ids are inside the vocabulary
    with pytest.raises(DataError, match=r"x\.db/meta\.json: token ids .*'MASK'.* outside the 10-id vocabulary of model B"):
        check_txt_db_vocab(TxtDb(db), 10, "model B")


def _narrow_img_db(src: Path, dst: Path, width: int) -> Path:
    """The same images with features cut to ``width`` (another detector's feature size)."""
    db = ImgDb(src, min_bb=3)
    with ImgDbWriter(dst, 0.2, 100, 3) as writer:
        for name in db.names:
            rec = db.get(name)
            writer.add(name, {"features": rec["features"][:, :width], "norm_bb": rec["norm_bb"],
                              "conf": rec["conf"], "soft_labels": rec["soft_labels"]}, db.name2nbb[name])
    return dst


def test_img_db_of_another_feature_width_is_refused_at_start(root, tmp_path, cfg, capsys):
    narrow = _narrow_img_db(root / "data" / "img_db" / "demo_imgs", tmp_path / "narrow", 32)
    cfg["train_datasets"][1]["img"] = [str(narrow)]  # the second source only: the first sets img_dim
    status, err = run_pretrain_cli(tmp_path, cfg, capsys)
    assert_one_line_error(status, err, f"image db {narrow / IMG_SUB}: features are 32-d", "img_dim 64")
    assert_no_run(tmp_path)
    with pytest.raises(DataError, match="features are 32-d but the VQA model expects img_dim 64"):
        check_img_db_width(ImgDb(narrow, min_bb=3), 64, "the VQA model")


# ------------------------------------------------------------------------------------------ silent nonsense
@pytest.mark.parametrize("where, edit, argv, fragments", [
    ("file", lambda c: c["train_datasets"][0].update(tasks=[], mix_ratio=[]), (),
     ["cfg.json", "dataset 'cap_en': tasks is empty"]),
    ("file", lambda c: c.update(mask_prob=1.5), (), ["cfg.json", "mask_prob: expected a probability in (0, 1], got 1.5"]),
    ("file", lambda c: c.update(mask_prob=0.0), (), ["mask_prob: expected a probability in (0, 1], got 0.0"]),
    ("override", lambda c: None, ("--itm_neg_prob", "-0.2"),
     ["command-line override --itm_neg_prob -0.2", "itm_neg_prob: expected a probability in [0, 1]"]),
    ("override", lambda c: None, ("--learning_rate", "fast"),
     ["command-line override --learning_rate fast", "config key 'learning_rate': expected float"]),
])
def test_nonsense_settings_are_refused_naming_file_or_override(tmp_path, cfg, capsys, where, edit, argv, fragments):
    edit(cfg)
    status, err = run_pretrain_cli(tmp_path, cfg, capsys, *argv)
    assert_one_line_error(status, err, *fragments)
    if where == "file":
        assert "override" not in err
    assert not (tmp_path / "run").exists()


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("caption", ["\u200b\u200c\u200d", "\ufeff \u2060", " \u00ad\u200e\t"])
def test_invisible_caption_is_an_error_or_a_counted_drop(root, tmp_path, capsys, caption):
    rows = [{"id": "1", "img_fname": "a.npz", "lang": "en", "caption": "a red cube"},
            {"id": "2", "img_fname": "a.npz", "lang": "en", "caption": caption}]
    src = _jsonl(tmp_path / "caps.jsonl", rows)
    argv = ["captions", "--input", str(src), "--output", str(tmp_path / "txt"), "--tokenizer",
            str(root / "data" / "tokenizer"), "--no_progress"]
    assert prepro.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{src}, line 2: field 'caption' is empty or only invisible characters" in err
    assert not (tmp_path / "txt").exists() or not list((tmp_path / "txt").iterdir())
    assert prepro.main([*argv, "--drop_empty"]) == 0
    assert "empty caption" in capsys.readouterr().out
    assert len(TxtDb(tmp_path / "txt" / "caps_en.db")) == 1


def test_vqa_input_with_only_empty_answers_is_refused(root, tmp_path, capsys):
    base = {"img_fname": "a.npz", "lang": "en", "question": "what colour?"}
    src = _jsonl(tmp_path / "vqa.jsonl", [{**base, "question_id": 1, "answers": ["red"]},
                                          {**base, "question_id": 2, "answers": ["", "  "]}])
    argv = ["vqa", "--input", str(src), "--output", str(tmp_path / "vqa.db"), "--tokenizer",
            str(root / "data" / "tokenizer"), "--no_progress"]
    assert prepro.main(argv) == 2
    assert f"{src}, line 2: field 'answers' holds 2 answer(s), all empty" in capsys.readouterr().err
    _jsonl(src, [{**base, "question_id": 1, "answers": []}, {**base, "question_id": 2, "answers": []}])
    assert prepro.main(argv) == 2
    assert f"{src}: no answer vocabulary: no line has an answer" in capsys.readouterr().err
    assert not (tmp_path / "vqa.db").exists() and not leftovers(tmp_path)


# ------------------------------------------------------------------------------------------ checkpoint size
def _uc2(layers: int, hidden: int = 32) -> UC2ForPretraining:
    values = UC2ModelConfig.from_json(Path(os.environ["UC2_DEMO_DIR"]) / "xlmr" / "config.json").to_dict()
    values.update(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=2 * hidden, img_dim=64,
                  num_attention_heads=2)
    return UC2ForPretraining(UC2ModelConfig.from_dict(values, source="test"))


def test_checkpoint_of_a_bigger_model_is_refused_naming_the_layers(tmp_path):
    path = tmp_path / "big.pt"
    torch.save(save_uc2_state_dict(_uc2(layers=3)), path)
    with pytest.raises(DataError, match=rf"{path}: the checkpoint has backbone tensors this model lacks: "
                                        r"encoder layers 1\.\.2 \(the model has 1\)"):
        load_uc2_checkpoint(_uc2(layers=1), path)


def test_checkpoint_of_another_width_names_the_shapes(tmp_path, cfg, capsys):
    path = tmp_path / "wide.pt"
    torch.save(save_uc2_state_dict(_uc2(layers=1, hidden=48)), path)
    with pytest.raises(DataError, match=r"wide\.pt: a model of another size \(\d+ tensor shape\(s\) differ: "
                                        r"roberta\.embeddings\.word_embeddings\.weight checkpoint \(\d+, 48\) vs model"):
        load_uc2_checkpoint(_uc2(layers=1), path)
    cfg["checkpoint"] = str(path)
    status, err = run_pretrain_cli(tmp_path, cfg, capsys)
    assert_one_line_error(status, err, str(path), "a model of another size")
    assert_no_run(tmp_path)


# ------------------------------------------------------------------------------------------ new-user tools
def test_tokenizer_cli_trains_from_any_jsonl_field_and_reports_a_short_vocabulary(root, tmp_path, capsys):
    from data.tokenizer import load_tokenizer

    src = root / "data" / "raw" / "vqa_train_en.jsonl"
    out = tmp_path / "tok"
    assert train_tokenizer.main(["--input", str(src), "--field", "question", "answers", "--size", "5000",
                                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    tok = load_tokenizer(out)
    assert f"{tok.vocab_size} ids" in captured.out and tok.mask_id == tok.vocab_size - 1
    assert "far below the 5000 asked for" in captured.err and f"vocab_size {tok.vocab_size}" in captured.err
    assert tok.encode("what colour") and not leftovers(tmp_path)
    assert train_tokenizer.main(["--input", str(src), "--field", "caption", "--size", "50",
                                 "--out", str(tmp_path / "tok2")]) == 1
    assert f"{src}, line 1: expected a JSON object with a field among ['caption']" in capsys.readouterr().err
    assert not (tmp_path / "tok2").exists()


def test_tiny_xlmr_reads_any_field_and_writes_readable_files(root, tmp_path):
    out = tmp_path / "xlmr"
    old = os.umask(0o022)
    try:
        make_tiny_xlmr.main(["--tokenizer", str(root / "data" / "tokenizer"), "--text",
                             str(root / "data" / "raw" / "vqa_train_en.jsonl"), "--field", "question",
                             "--out", str(out), "--steps", "2", "--batch", "4", "--hidden", "16", "--layers", "1",
                             "--heads", "2", "--ffn", "32"])
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes


def test_xlmr_to_uc2_names_what_is_really_missing(root, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="model.weights"):
        xlmr_to_uc2.main(["--xlmr", str(root / "xlmr"), "--img_db", str(root / "data" / "img_db" / "demo_imgs"),
                          "--min_bb", "3", "--out", str(tmp_path / "init")])
    summary = next(r.getMessage() for r in caplog.records if "missing (left at init)" in r.getMessage())
    assert "roberta.img_embeddings.*" in summary and "'roberta.*'" not in summary
    assert "roberta.encoder" not in summary.split("missing (left at init)")[1]


def test_inf_vqa_row_label_comes_from_the_run(tmp_path):
    import argparse

    import tasks.vqa as vqa_task
    from training.vqa_config import VQAConfig

    args = argparse.Namespace(setting="", run_dir=str(tmp_path / "vqa_en_nopt"), checkpoint="")
    cfg = VQAConfig(output_dir="x", train_txt_dbs=["a"], train_img_dbs=["b"],
                    checkpoint="/storage/xlmr_init/model_final.pt")
    assert vqa_task.setting_label(args, cfg) == "fine-tuned vqa_en_nopt (from xlmr_init/model_final.pt)"
    assert vqa_task.setting_label(args, VQAConfig(output_dir="x", train_txt_dbs=["a"], train_img_dbs=["b"])) == \
        "fine-tuned vqa_en_nopt (from no initial checkpoint)"
    args.setting = "mine"
    assert vqa_task.setting_label(args, cfg) == "mine"
