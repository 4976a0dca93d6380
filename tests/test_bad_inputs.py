"""Bad-input suite (issue 6): the whole pipeline, fed broken inputs, fails with a clear error and leaves
no half-written output.

Every case starts from one tiny VALID setup (the demo corpus, a 1-layer XLM-R stand-in and a finished
2-step pretraining run, built once for this module) and breaks exactly ONE thing. It asserts
- the exception type (ConfigError, DataError, CheckpointError) or the script's exit status,
- that the message names the culprit: the file, and the key or line inside it, and what was expected,
- that no output was written or, where a run directory already existed, that nothing in it changed, and
  that no temporary build file (``*.tmp-<pid>``, ``*.old-<pid>``) survived.

Entry points are driven through their ``main(argv)``: ``pretrain.py``, ``prepro.py``, ``train_vqa.py``,
``inf_vqa.py``, ``inf_itm.py``, ``train_itm.py``, ``scripts/convert_imgdir.py``,
``scripts/make_demo_data.py``; library readers directly where a reader is the thing under test.
"""
from __future__ import annotations

import json
import logging
import os
import runpy
import shutil
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch

import inf_itm
import inf_vqa
import prepro
import pretrain
import train_itm
import train_vqa
from utils.errors import DataError
from data.img_db import ImgDb, ImgDbWriter
from data.txt_db import TxtDbWriter
from scripts import convert_imgdir, make_demo_data
from tests._bad_input_helpers import (build_setup, copy_db, expect_error, leftovers, pretrain_config, snapshot,
                                      truncate, write_json)
from utils.errors import CheckpointError
from utils.errors import ConfigError

IMG_SUBDIR = "feat_th0.2_max100_min3"  # the demo corpus' box rule (conf_th 0.2, max_bb 100, min_bb 3)
NBB_JSON = "nbb_th0.2_max100_min3.json"


# ----------------------------------------------------------------------------------------------------------
# the valid setup, built once
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory, repo_root) -> Path:
    """``${UC2_DEMO_DIR}``: ``data/`` (demo corpus), ``xlmr/`` and ``pretrain/`` (a finished 2-step run,
    proving the unbroken setup trains; its ``model_final.pt`` is the valid checkpoint the cases break)."""
    base = build_setup(tmp_path_factory.mktemp("uc2_demo"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UC2_DEMO_DIR", str(base))
        cfg_path = write_json(base / "pretrain.json", pretrain_config(repo_root, base / "pretrain"))
        final = pretrain.main(["--config", str(cfg_path)])
    assert final.is_file() and (base / "pretrain" / "ckpt" / "train_state_step_2.pt").is_file()
    return base


@pytest.fixture(autouse=True)
def _demo_env(monkeypatch, root):
    monkeypatch.setenv("UC2_DEMO_DIR", str(root))


@pytest.fixture
def good_cfg(repo_root, tmp_path) -> dict:
    """A valid pretraining config (as a dict) writing to ``tmp_path/run``."""
    return pretrain_config(repo_root, tmp_path / "run")


def run_pretrain(tmp_path: Path, cfg: dict | str, *argv: str) -> Path:
    """pretrain.main on ``cfg`` (a dict, or raw config text) written to ``tmp_path/cfg.json``."""
    path = tmp_path / "cfg.json"
    path.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg, indent=1), encoding="utf-8")
    return pretrain.main(["--config", str(path), *argv])


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} was created: {sorted(out.rglob('*')) if out.is_dir() else 'a file'}"
    assert not leftovers(out.parent), leftovers(out.parent)


# ----------------------------------------------------------------------------------------------------------
# configs: invalid JSON, unknown / missing keys, wrong types, bad overrides, unset variables
# ----------------------------------------------------------------------------------------------------------
def _drop(data: dict, *path) -> dict:
    node = data
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return data


def _put(data: dict, value, *path) -> dict:
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


CONFIG_CASES = {
    "unknown_key": (lambda c: _put(c, 1e-3, "learning_rte"),
                    ["unknown config key 'learning_rte'", "did you mean 'learning_rate'"]),
    "unknown_nested_key": (lambda c: _put(c, [1, 1, 1], "train_datasets", 0, "mix_ratoi"),
                           ["train_datasets[0].mix_ratoi", "did you mean 'train_datasets[0].mix_ratio'"]),
    "missing_key": (lambda c: _drop(c, "output_dir"), ["missing required config key 'output_dir'"]),
    "missing_nested_key": (lambda c: _drop(c, "train_datasets", 1, "db"),
                           ["missing required config key 'train_datasets[1].db'"]),
    "wrong_type": (lambda c: _put(c, "two", "num_train_steps"),
                   ["config key 'num_train_steps': expected int, got 'two'"]),
    "wrong_type_in_list": (lambda c: _put(c, [12, "9", 9], "train_datasets", 0, "mix_ratio"),
                           ["config key 'train_datasets[0].mix_ratio[1]': expected float, got '9'"]),
    "not_a_choice": (lambda c: _put(c, "fp8", "precision"), ["config key 'precision'", "expected one of", "'fp8'"]),
    "mix_ratio_length": (lambda c: _put(c, [12, 9], "train_datasets", 0, "mix_ratio"),
                         ["dataset 'cap_en': mix_ratio has 2 values for 3 tasks"]),
    "unknown_task": (lambda c: _put(c, ["mlm", "itmm", "mrtm"], "train_datasets", 0, "tasks"),
                     ["train_datasets[0].tasks[1]", "unknown task 'itmm'", "known:", "mrtm"]),
    "value_out_of_range": (lambda c: _put(c, 0, "num_train_steps"), ["num_train_steps: expected >= 1, got 0"]),
    "no_training_source": (lambda c: _put(c, [], "train_datasets"), ["train_datasets: expected at least one"]),
}


# Checked by pretrain.py / the task builder after the file was loaded: their messages name the key path only.
CHECKED_AFTER_LOADING = {"no_training_source", "unknown_task"}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_pretrain_config_key_errors(case, good_cfg, tmp_path):
    mutate, fragments = CONFIG_CASES[case]
    if case not in CHECKED_AFTER_LOADING:
        fragments = [f"{tmp_path / 'cfg.json'}: ", *fragments]
    expect_error(lambda: run_pretrain(tmp_path, mutate(good_cfg)), ConfigError, *fragments)
    assert_nothing_written(tmp_path / "run")


def test_pretrain_config_invalid_json_names_file_line_and_column(good_cfg, tmp_path):
    lines = json.dumps(good_cfg, indent=1).splitlines()
    seed_line = next(i for i, line in enumerate(lines) if line.strip().startswith('"seed"'))
    lines[seed_line] = lines[seed_line].rstrip(",")  # the next line's key now follows without a comma
    msg = expect_error(lambda: run_pretrain(tmp_path, "\n".join(lines)), ConfigError,
                       f"{tmp_path / 'cfg.json'}:{seed_line + 2}:", "invalid JSON", "delimiter")
    assert "trailing comma" not in msg
    assert_nothing_written(tmp_path / "run")


def test_pretrain_config_trailing_comma_points_to_the_flag(good_cfg, tmp_path):
    text = json.dumps(good_cfg, indent=1)
    text = text[: text.rindex("}")] + ",}"  # the original UC2 config's mistake
    expect_error(lambda: run_pretrain(tmp_path, text), ConfigError, str(tmp_path / "cfg.json"),
                 "invalid JSON", "allow_trailing_commas")
    assert_nothing_written(tmp_path / "run")


def test_pretrain_config_top_level_not_an_object(tmp_path):
    expect_error(lambda: run_pretrain(tmp_path, "[1, 2]"), ConfigError, str(tmp_path / "cfg.json"),
                 "expected a JSON object at the top level")


def test_pretrain_config_file_missing(tmp_path):
    missing = tmp_path / "nope.json"
    expect_error(lambda: pretrain.main(["--config", str(missing)]), ConfigError,
                 f"cannot read config file {missing}")


def test_pretrain_config_unset_variable_names_key(good_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("UC2_DEMO_DIR")
    expect_error(lambda: run_pretrain(tmp_path, good_cfg), ConfigError, str(tmp_path / "cfg.json"),
                 "key 'xlmr_dir' uses ${UC2_DEMO_DIR}", "UC2_DEMO_DIR is not set")
    assert_nothing_written(tmp_path / "run")


@pytest.mark.parametrize("argv, fragments", [
    (["--num_train_steps", "many"], ["config key 'num_train_steps': expected int, got 'many'"]),
    (["--train_datasets.5.name", "x"], ["override '--train_datasets.5'", "expected a list index below 2"]),
    (["--no_such_option", "1"], ["unknown config key 'no_such_option'"]),
    (["--seed"], ["'--seed' needs a value"]),
], ids=["override_type", "override_index", "override_unknown", "override_no_value"])
def test_pretrain_command_line_override_errors(argv, fragments, good_cfg, tmp_path):
    expect_error(lambda: run_pretrain(tmp_path, good_cfg, *argv), ConfigError, *fragments)
    assert_nothing_written(tmp_path / "run")


# ----------------------------------------------------------------------------------------------------------
# paths that do not exist
# ----------------------------------------------------------------------------------------------------------
MISSING_PATH_CASES = {
    # key path in the config -> (exception, fragments after the missing path itself)
    ("train_datasets", 0, "db", 0): (DataError, ["text db", "directory not found"]),
    ("train_datasets", 1, "img", 0): (DataError, ["image db", "directory not found"]),
    ("tokenizer",): (DataError, ["tokenizer folder", "does not exist", "tokenizer.json"]),
    ("xlmr_dir",): (ConfigError, ["config.json", "cannot read model config JSON"]),
    ("label_dir",): (DataError, ["label file not found", "objects_vocab_"]),
    ("model_config",): (ConfigError, ["cannot read model config JSON"]),
}


@pytest.mark.parametrize("key", sorted(MISSING_PATH_CASES, key=str), ids=lambda k: ".".join(map(str, k)))
def test_pretrain_missing_paths_are_named(key, good_cfg, tmp_path):
    exc, fragments = MISSING_PATH_CASES[key]
    missing = tmp_path / "does_not_exist"
    _put(good_cfg, str(missing), *key)
    expect_error(lambda: run_pretrain(tmp_path, good_cfg), exc, str(missing), *fragments)
    assert_nothing_written(tmp_path / "run")


# ----------------------------------------------------------------------------------------------------------
# text databases: missing, corrupt, empty, missing or broken side files, captions of unknown images
# ----------------------------------------------------------------------------------------------------------
def _break_remove(db: Path, name: str) -> None:
    (db / name).unlink()


def _break_text(db: Path, name: str, text: str) -> None:
    (db / name).write_text(text, encoding="utf-8")


def _break_json(db: Path, name: str, edit) -> None:
    path = db / name
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def _retarget_first_caption(data: dict) -> None:
    data[sorted(data)[0]] = "ghost_image.npz"


TXT_DB_CASES = {
    "no_lmdb_inside": (lambda db: _break_remove(db, "data.mdb"), ["no data.mdb inside"]),
    "meta_missing": (lambda db: _break_remove(db, "meta.json"), ["meta.json: file not found"]),
    "id2len_missing": (lambda db: _break_remove(db, "id2len.json"), ["id2len.json: file not found"]),
    "txt2img_missing": (lambda db: _break_remove(db, "txt2img.json"), ["txt2img.json: file not found"]),
    "meta_invalid_json": (lambda db: _break_text(db, "meta.json", '{"CLS": 0,'), ["meta.json: not valid JSON"]),
    "meta_wrong_type": (lambda db: _break_json(db, "meta.json", lambda m: m.update(CLS="<s>")),
                        ["meta.json: key 'CLS' must be an integer token id", "'<s>'"]),
    "meta_key_missing": (lambda db: _break_json(db, "meta.json", lambda m: m.pop("MASK")),
                         ["meta.json: key 'MASK' must be an integer token id"]),
    "id2len_bad_value": (lambda db: _break_json(db, "id2len.json", lambda m: m.update({next(iter(m)): -3})),
                         ["id2len.json: entry", "= -3, expected a non-negative integer"]),
    "caption_of_unknown_image": (lambda db: _break_json(db, "txt2img.json", _retarget_first_caption),
                                 ["no image 'ghost_image.npz'", "txt2img.json"]),
}


@pytest.mark.parametrize("case", sorted(TXT_DB_CASES))
def test_pretrain_broken_txt_db(case, root, good_cfg, tmp_path):
    breaker, fragments = TXT_DB_CASES[case]
    db = copy_db(root / "data" / "txt_db" / "cap_en_train.db", tmp_path / "cap_en_train.db")
    breaker(db)
    good_cfg["train_datasets"][0]["db"] = [str(db)]
    expect_error(lambda: run_pretrain(tmp_path, good_cfg), DataError, str(db), *fragments)
    assert_nothing_written(tmp_path / "run")


def test_pretrain_corrupt_txt_lmdb(root, good_cfg, tmp_path):
    db = copy_db(root / "data" / "txt_db" / "cap_en_train.db", tmp_path / "cap_en_train.db")
    size = (db / "data.mdb").stat().st_size
    (db / "data.mdb").write_bytes(np.random.default_rng(0).bytes(size))
    good_cfg["train_datasets"][0]["db"] = [str(db)]
    expect_error(lambda: run_pretrain(tmp_path, good_cfg), DataError, str(db), "cannot open")
    assert_nothing_written(tmp_path / "run")  # found when the db is opened, before the run directory exists


def test_pretrain_corrupt_txt_record_names_db_and_key(root, good_cfg, tmp_path):
    db = copy_db(root / "data" / "txt_db" / "cap_en_train.db", tmp_path / "cap_en_train.db")
    env = lmdb.open(str(db), subdir=True)  # a private copy: no other handle in this process
    with env.begin(write=True) as txn:
        for key in list(txn.cursor().iternext(keys=True, values=False)):
            txn.put(key, b"not lz4 at all")
    env.close()
    good_cfg["train_datasets"] = good_cfg["train_datasets"][:1]
    good_cfg["train_datasets"][0].update(db=[str(db)], tasks=["mlm"], mix_ratio=[1])
    expect_error(lambda: run_pretrain(tmp_path, good_cfg), DataError, f"text db {db}, key ",
                 "not a valid lz4 frame")
    assert not list((tmp_path / "run").rglob("*.pt"))
    assert not leftovers(tmp_path)


def test_pretrain_empty_txt_db_names_it(root, good_cfg, tmp_path):
    meta = json.loads((root / "data" / "txt_db" / "cap_en_train.db" / "meta.json").read_text(encoding="utf-8"))
    db = tmp_path / "empty.db"
    with TxtDbWriter(db, meta):
        pass  # a database with no example (prepro refuses to write one; other tools may not)
    good_cfg["train_datasets"][0]["db"] = [str(db)]
    expect_error(lambda: run_pretrain(tmp_path, good_cfg), DataError, str(db), "no example")
    assert_nothing_written(tmp_path / "run")


def test_pretrain_all_examples_too_long_names_db_and_limit(good_cfg, tmp_path):
    good_cfg["max_txt_len"] = 1
    expect_error(lambda: run_pretrain(tmp_path, good_cfg), DataError, "cap_en_train.db", "max_txt_len")
    assert_nothing_written(tmp_path / "run")


# ----------------------------------------------------------------------------------------------------------
# image databases: wrong rule, corrupt record, side files, wrong feature width
# ----------------------------------------------------------------------------------------------------------
def _copy_img_db(root: Path, dst: Path) -> Path:
    return copy_db(root / "data" / "img_db" / "demo_imgs", dst)


def test_pretrain_img_db_without_lmdb_for_the_rule(good_cfg, tmp_path, root):
    good_cfg["conf_th"] = 0.3
    expect_error(lambda: run_pretrain(tmp_path, good_cfg), DataError, str(root / "data" / "img_db" / "demo_imgs"),
                 "no feature LMDB for conf_th=0.3", "feat_th0.3_max100_min3", f"found ['{IMG_SUBDIR}']")
    assert_nothing_written(tmp_path / "run")


def test_img_db_corrupt_record_names_db_and_key(root, tmp_path):
    img = _copy_img_db(root, tmp_path / "imgs")
    first = ImgDb(root / "data" / "img_db" / "demo_imgs", min_bb=3).names[0]
    env = lmdb.open(str(img / IMG_SUBDIR))
    with env.begin(write=True) as txn:
        txn.put(first.encode(), b"\xc1 garbage")
    env.close()
    expect_error(lambda: ImgDb(img, min_bb=3), DataError, f"image db {img / IMG_SUBDIR}, key '{first}'",
                 "not a valid image record")


def test_img_db_nbb_json_lacking_an_image(root, tmp_path):
    img = _copy_img_db(root, tmp_path / "imgs")
    nbb = json.loads((img / NBB_JSON).read_text(encoding="utf-8"))
    dropped = sorted(nbb)[-1]
    write_json(img / NBB_JSON, {k: v for k, v in nbb.items() if k != dropped})
    expect_error(lambda: ImgDb(img, min_bb=3), DataError, str(img / NBB_JSON), "no box count for 1 image(s)",
                 dropped)


def test_img_db_missing_nbb_json_is_recomputed_with_a_warning(root, tmp_path, caplog):
    """The original crashed here; we recompute the counts from the stored 'conf' (same numbers) and warn."""
    img = _copy_img_db(root, tmp_path / "imgs")
    (img / NBB_JSON).unlink()
    with caplog.at_level("WARNING", logger="data.img_db"):
        counts = ImgDb(img, min_bb=3).name2nbb
    assert counts == ImgDb(root / "data" / "img_db" / "demo_imgs", min_bb=3).name2nbb
    assert any(NBB_JSON in r.getMessage() and "not found" in r.getMessage() for r in caplog.records)


def test_pretrain_feature_width_differs_from_checkpoint(root, good_cfg, tmp_path):
    """An img_db of narrower features than the checkpoint was trained on: a shape error naming img_linear."""
    src = root / "data" / "raw" / "npz" / "demo_imgs"
    narrow = tmp_path / "npz"
    narrow.mkdir()
    for path in sorted(src.glob("*.npz")):
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["features"] = arrays["features"][:, :-8]
        np.savez(narrow / path.name, **arrays)
    assert convert_imgdir.main(["--img_dir", str(narrow), "--output", str(tmp_path / "imgs"), "--min_bb", "3"]) == 0
    for spec in good_cfg["train_datasets"]:
        spec["img"] = [str(tmp_path / "imgs")]
    ckpt = root / "pretrain" / "model_final.pt"
    expect_error(lambda: run_pretrain(tmp_path, good_cfg, "--checkpoint", str(ckpt)), DataError, str(ckpt),
                 "shape mismatch for 'roberta.img_embeddings.img_linear.weight'")
    assert_nothing_written(tmp_path / "run")


def test_img_db_record_of_another_feature_width(tmp_path):
    rng = np.random.default_rng(0)

    def record(width: int) -> dict:
        return {"features": rng.random((4, width), dtype=np.float32), "norm_bb": np.full((4, 6), 0.5, np.float32),
                "conf": np.full((4, 1), 0.9, np.float32)}

    with ImgDbWriter(tmp_path / "imgs", min_bb=3) as writer:
        writer.add("a.npz", record(40))
        writer.add("b.npz", record(39))  # one image from another detector
    db = ImgDb(tmp_path / "imgs", min_bb=3)
    assert db.get("a.npz")["features"].shape == (4, 40)
    expect_error(lambda: db.get("b.npz"), DataError, f"image db {db.db_dir}, key 'b.npz'",
                 "'features' has shape (4, 39), expected (n, 40)")


# ----------------------------------------------------------------------------------------------------------
# checkpoints: truncated, wrong model, wrong hidden size, not a state dict, a pickle with code in it
# ----------------------------------------------------------------------------------------------------------
class _RunsCode:
    """Pickles to a call of os.mkdir: loading it with plain pickle would create ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _wrong_hidden_state(root: Path) -> dict:
    from model.config import UC2ModelConfig
    from model.model import UC2ForPretraining

    values = json.loads((root / "pretrain" / "model.json").read_text(encoding="utf-8"))
    values.update(hidden_size=16, intermediate_size=32)
    return UC2ForPretraining(UC2ModelConfig.from_dict(values)).state_dict()


def _make_checkpoint(kind: str, root: Path, path: Path) -> list[str]:
    """Write a broken checkpoint of ``kind`` to ``path``; returns the fragments its error must hold."""
    good = root / "pretrain" / "model_final.pt"
    if kind == "truncated":
        shutil.copy(good, path)
        truncate(path)
        return ["not a readable weights-only torch checkpoint", "truncated"]
    if kind == "wrong_model":
        torch.save(torch.nn.Linear(4, 2).state_dict(), path)
        return ["backbone tensors missing", "roberta.embeddings.word_embeddings.weight"]
    if kind == "wrong_hidden_size":
        torch.save(_wrong_hidden_state(root), path)
        return ["shape mismatch for 'roberta.embeddings", "16)", "32)"]
    if kind == "not_a_state_dict":
        torch.save([torch.zeros(2), torch.ones(2)], path)
        return ["expected a state dict", "got list"]
    if kind == "training_state_not_weights":
        torch.save({"step": 3, "optimizer": {}}, path)
        return ["expected a state dict of tensors", "'step' holds int"]
    if kind == "pickle_with_code":
        torch.save({"roberta.pooler.dense.bias": _RunsCode(path.with_name("pwned"))}, path)
        return ["weights-only", "a pickle holding code"]
    raise AssertionError(kind)


CHECKPOINT_KINDS = ["truncated", "wrong_model", "wrong_hidden_size", "not_a_state_dict",
                    "training_state_not_weights", "pickle_with_code"]


@pytest.mark.parametrize("kind", CHECKPOINT_KINDS)
def test_pretrain_bad_checkpoint(kind, root, good_cfg, tmp_path):
    ckpt = tmp_path / f"{kind}.pt"
    fragments = _make_checkpoint(kind, root, ckpt)
    expect_error(lambda: run_pretrain(tmp_path, good_cfg, "--checkpoint", str(ckpt)), DataError, str(ckpt),
                 *fragments)
    assert not (tmp_path / "pwned").exists(), "loading a checkpoint ran code"
    assert_nothing_written(tmp_path / "run")


def test_pretrain_missing_checkpoint_and_ea_file(good_cfg, tmp_path):
    missing = tmp_path / "nope.pt"
    expect_error(lambda: run_pretrain(tmp_path, good_cfg, "--checkpoint", str(missing)), DataError,
                 f"{missing}: checkpoint file not found")
    good_cfg["early_adaptation"] = {"init_from": str(missing)}
    expect_error(lambda: run_pretrain(tmp_path, good_cfg), ConfigError,
                 f"initial weights file {missing} does not exist")
    assert_nothing_written(tmp_path / "run")


def test_inf_itm_truncated_checkpoint(root, tmp_path):
    ckpt = truncate(Path(shutil.copy(root / "pretrain" / "model_final.pt", tmp_path / "model.pt")))
    out = tmp_path / "eval"
    spec = {"name": "demo_en_test", "txt_db": str(root / "data/txt_db/cap_en_test.db"),
            "img_db": str(root / "data/img_db/demo_imgs"), "dataset": "demo", "lang": "en"}
    cfg = write_json(tmp_path / "eval.json", {"output_dir": str(out), "checkpoint": str(ckpt),
                                             "model_config": str(root / "pretrain" / "model.json"),
                                             "test_datasets": [spec], "min_bb": 3})
    argv = ["--config", str(cfg)]
    expect_error(lambda: inf_itm.main(argv), DataError, str(ckpt), "not a readable weights-only torch checkpoint")
    assert_nothing_written(out)


# ----------------------------------------------------------------------------------------------------------
# tokenizer
# ----------------------------------------------------------------------------------------------------------
def test_pretrain_tokenizer_folder_without_tokenizer_files(good_cfg, tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "vocab.txt").write_text("a\n", encoding="utf-8")
    good_cfg["tokenizer"] = str(folder)
    expect_error(lambda: run_pretrain(tmp_path, good_cfg), DataError, f"tokenizer folder {folder}",
                 "neither tokenizer.json nor sentencepiece.bpe.model", "vocab.txt")
    assert_nothing_written(tmp_path / "run")


def test_pretrain_tokenizer_model_file_corrupt(good_cfg, tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "sentencepiece.bpe.model").write_bytes(b"\x00garbage" * 10)
    good_cfg["tokenizer"] = str(folder)
    expect_error(lambda: run_pretrain(tmp_path, good_cfg), DataError,
                 f"{folder / 'sentencepiece.bpe.model'} is not a readable SentencePiece model")
    assert_nothing_written(tmp_path / "run")


def test_pretrain_tokenizer_of_another_vocabulary(good_cfg, tmp_path, root):
    """A valid tokenizer that is not the one the model (the XLM-R folder) was made for."""
    from tests.helpers import make_tiny_tokenizer

    other = make_tiny_tokenizer(tmp_path, vocab_size=200)
    good_cfg["tokenizer"] = str(other)
    msg = expect_error(lambda: run_pretrain(tmp_path, good_cfg), ConfigError, "model vocab_size",
                       f"tokenizer {other}")
    assert str(json.loads((root / "xlmr" / "config.json").read_text(encoding="utf-8"))["vocab_size"]) in msg
    assert_nothing_written(tmp_path / "run")


def test_prepro_missing_tokenizer_folder(root, tmp_path, capsys):
    out = tmp_path / "txt"
    rc = prepro.main(["captions", "--input", str(root / "data/raw/captions_val.jsonl"), "--output", str(out),
                      "--tokenizer", str(tmp_path / "no_tok"), "--no_progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"tokenizer folder {tmp_path / 'no_tok'} does not exist" in err
    assert_nothing_written(out)


# ----------------------------------------------------------------------------------------------------------
# prepro inputs: captions lines, alignment files, VQA answer files
# ----------------------------------------------------------------------------------------------------------
def _captions_with(root: Path, tmp_path: Path, lineno: int, text: str) -> Path:
    lines = (root / "data/raw/captions_val.jsonl").read_text(encoding="utf-8").splitlines()
    lines[lineno - 1] = text
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _good_caption(root: Path, **changes) -> str:
    first = json.loads((root / "data/raw/captions_val.jsonl").read_text(encoding="utf-8").splitlines()[0])
    return json.dumps({**first, **changes}, ensure_ascii=False)


CAPTION_CASES = {
    "malformed_json": (lambda r: '{"id": "x", "caption": ', ["line 5: malformed JSON"]),
    "missing_field": (lambda r: json.dumps({"id": "x", "img_fname": "a.npz", "lang": "en"}),
                      ["line 5: missing field 'caption'"]),
    "wrong_field_type": (lambda r: _good_caption(r, id="x5", caption=["a", "list"]),
                         ["line 5: field 'caption' must be a string, got list"]),
    "unknown_image": (lambda r: _good_caption(r, id="x5", img_fname="ghost.npz"),
                      ["line 5: image 'ghost.npz' is not in img_db", "--drop_unknown_images"]),
}


@pytest.mark.parametrize("case", sorted(CAPTION_CASES))
def test_prepro_captions_bad_line(case, root, tmp_path, capsys):
    """Line 5 of a valid captions file is broken: the error names file and line, no db (of ANY language,
    including those of lines 1-4 already tokenised) is published."""
    line, fragments = CAPTION_CASES[case]
    path = _captions_with(root, tmp_path, 5, line(root))
    out = tmp_path / "txt"
    rc = prepro.main(["captions", "--input", str(path), "--output", str(out), "--tokenizer",
                      str(root / "data/tokenizer"), "--img_db", str(root / "data/img_db/demo_imgs"), "--no_progress"])
    err = capsys.readouterr().err
    assert rc == 2
    for fragment in [str(path), *fragments]:
        assert fragment in err
    assert not out.exists() or not list(out.iterdir()), sorted(out.iterdir())
    assert not leftovers(tmp_path)


def _paired_inputs(root: Path, tmp_path: Path, edit) -> tuple[Path, Path]:
    raw = root / "data" / "raw"
    jsonl = Path(shutil.copy(raw / "paired_val_en-de.jsonl", tmp_path / "pairs.jsonl"))
    lines = (raw / "paired_val_en-de.align").read_text(encoding="utf-8").splitlines()
    align = tmp_path / "pairs.align"
    align.write_text("".join(line + "\n" for line in edit(lines)), encoding="utf-8")
    return jsonl, align


def _out_of_range(lines: list[str]) -> list[str]:
    return lines[:2] + [lines[2] + " 0-99"] + lines[3:]


ALIGN_CASES = {
    "out_of_range": (_out_of_range, ["pairs.align, line 3 (alignment of", "pairs.jsonl, line 3)",
                                     "alignment pair 0-99 is out of range", "caption2 has"]),
    "one_line_short": (lambda lines: lines[:-1], ["pairs.align has 3 alignment lines but",
                                                  "pairs.jsonl has 4 JSON lines"]),
    "malformed_pair": (lambda lines: ["0:0"] + lines[1:], ["pairs.align, line 1", "malformed alignment pair '0:0'"]),
}


@pytest.mark.parametrize("case", sorted(ALIGN_CASES))
def test_prepro_paired_bad_alignment(case, root, tmp_path, capsys):
    edit, fragments = ALIGN_CASES[case]
    jsonl, align = _paired_inputs(root, tmp_path, edit)
    out = tmp_path / "paired.db"
    rc = prepro.main(["paired", "--input", str(jsonl), "--align", str(align), "--output", str(out),
                      "--tokenizer", str(root / "data/tokenizer"), "--no_progress"])
    err = capsys.readouterr().err
    assert rc == 2
    for fragment in fragments:
        assert fragment in err, err
    assert_nothing_written(out)


VQA_VOCAB_CASES = {
    "missing_file": (None, ["ans2label file", "does not exist"]),
    "labels_with_gap": ({"yes": 0, "no": 2}, ["labels must be 0..1, each used exactly once"]),
    "not_an_object": (["yes", "no"], ["expected a JSON object mapping answer strings to integer labels"]),
}


@pytest.mark.parametrize("case", sorted(VQA_VOCAB_CASES))
def test_prepro_vqa_bad_answer_file(case, root, tmp_path, capsys):
    content, fragments = VQA_VOCAB_CASES[case]
    vocab = tmp_path / "ans2label.json"
    if content is not None:
        write_json(vocab, content)
    out = tmp_path / "vqa_val.db"
    rc = prepro.main(["vqa", "--input", str(root / "data/raw/vqa_val_en.jsonl"), "--output", str(out),
                      "--tokenizer", str(root / "data/tokenizer"), "--ans2label", str(vocab), "--no_progress"])
    err = capsys.readouterr().err
    assert rc == 2
    for fragment in [str(vocab), *fragments]:
        assert fragment in err, err
    assert_nothing_written(out)


def _vqa_argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(Path(__file__).resolve().parents[1] / "config" / "vqa_demo_en.json"),
            "--output_dir", str(out), "--checkpoint", str(root / "pretrain" / "model_final.pt"),
            "--num_train_steps", "1", "--warmup_steps", "0", *extra]


def test_train_vqa_unknown_answer_file(root, tmp_path):
    missing = tmp_path / "ans2label.json"
    out = tmp_path / "vqa_run"
    expect_error(lambda: train_vqa.main(_vqa_argv(root, out, "--ans2label", str(missing))), DataError,
                 f"ans2label file {missing} does not exist")
    assert_nothing_written(out)


def test_train_vqa_txt_db_built_with_another_vocabulary(root, tmp_path):
    vocab = write_json(tmp_path / "ans2label.json", {"yes": 0, "no": 1})
    out = tmp_path / "vqa_run"
    expect_error(lambda: train_vqa.main(_vqa_argv(root, out, "--ans2label", str(vocab))), DataError,
                 "vqa_en_train.db/meta.json: num_answers is", "the answer vocabulary has 2 answers")
    assert_nothing_written(out)


def test_inf_vqa_unknown_answer_file(root, tmp_path):
    missing = tmp_path / "ans2label.json"
    out = tmp_path / "preds.json"
    argv = ["--txt_db", str(root / "data/txt_db/vqa_en_val.db"), "--img_db", str(root / "data/img_db/demo_imgs"),
            "--output", str(out), "--ans2label", str(missing), "--checkpoint", str(root / "pretrain/model_final.pt"),
            "--model_config", str(root / "pretrain/model.json")]
    expect_error(lambda: inf_vqa.main(argv), DataError, f"ans2label file {missing} does not exist")
    assert_nothing_written(out)


def test_inf_vqa_pretraining_checkpoint_is_not_a_vqa_model(root, tmp_path):
    from utils.config import to_dict
    from training.vqa_config import VQAConfig

    run = tmp_path / "vqa_run"  # only the run config: the demo's box rule (min_bb 3) is not the default
    run.mkdir()
    img_db = str(root / "data/img_db/demo_imgs")
    write_json(run / "hps.json", to_dict(VQAConfig(output_dir=str(run), train_txt_dbs=["x.db"],
                                                   train_img_dbs=[img_db], min_bb=3)))
    ckpt = root / "pretrain" / "model_final.pt"
    out = tmp_path / "preds.json"
    argv = ["--run_dir", str(run), "--txt_db", str(root / "data/txt_db/vqa_en_val.db"), "--output", str(out),
            "--ans2label", str(root / "data/txt_db/vqa_en_train.db/ans2label.json"),
            "--checkpoint", str(ckpt), "--model_config", str(root / "pretrain/model.json")]
    expect_error(lambda: inf_vqa.main(argv), DataError, f"{ckpt}: no trained weights for ['vqa_output.",
                 "not a fine-tuned VQA model")
    assert_nothing_written(out)


def test_train_itm_missing_txt_db(root, tmp_path):
    out = tmp_path / "itm_run"
    argv = ["--config", str(Path(__file__).resolve().parents[1] / "config" / "itm_demo_en_only.json"),
            "--output_dir", str(out), "--checkpoint", str(root / "pretrain" / "model_final.pt"),
            "--train_datasets.0.txt_db", str(tmp_path / "nope.db")]
    expect_error(lambda: train_itm.main(argv), DataError, f"text db {tmp_path / 'nope.db'}: directory not found")
    assert_nothing_written(out)


# ----------------------------------------------------------------------------------------------------------
# image conversion and the demo corpus generator
# ----------------------------------------------------------------------------------------------------------
def test_convert_imgdir_missing_folder(tmp_path, capsys):
    rc = convert_imgdir.main(["--img_dir", str(tmp_path / "nope"), "--output", str(tmp_path / "imgs")])
    assert rc == 1
    assert f"{tmp_path / 'nope'}: feature directory not found" in capsys.readouterr().err
    assert_nothing_written(tmp_path / "imgs")


def test_convert_imgdir_no_usable_file_writes_nothing(root, tmp_path, capsys):
    src = tmp_path / "npz"
    src.mkdir()
    for path in sorted((root / "data/raw/npz/demo_imgs").glob("*.npz"))[:3]:
        truncate(Path(shutil.copy(path, src / path.name)))
    out = tmp_path / "imgs"
    rc = convert_imgdir.main(["--img_dir", str(src), "--output", str(out), "--min_bb", "3"])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"{src}: none of the 3 .npz files is usable" in err and "unreadable npz" in err
    assert not out.exists() or not list(out.iterdir()), sorted(out.iterdir())
    assert not leftovers(tmp_path)


def test_convert_imgdir_pickled_array_is_dropped_not_run(root, tmp_path, capsys):
    src = tmp_path / "npz"
    src.mkdir()
    good = sorted((root / "data/raw/npz/demo_imgs").glob("*.npz"))[:2]
    for path in good:
        shutil.copy(path, src / path.name)
    marker = tmp_path / "pwned"
    np.savez(src / "evil.npz", features=np.array([_RunsCode(marker)], dtype=object))
    out = tmp_path / "imgs"
    assert convert_imgdir.main(["--img_dir", str(src), "--output", str(out), "--min_bb", "3"]) == 0
    line = capsys.readouterr().out
    assert "converted 2 images" in line and "evil.npz: unreadable npz" in line and "allow_pickle" in line
    assert not marker.exists()
    assert ImgDb(out, min_bb=3).names == [p.name for p in good]


def test_make_demo_data_bad_size_writes_nothing(tmp_path, capsys):
    out = tmp_path / "demo"
    assert make_demo_data.main(["--out", str(out), "--n_train", "0", "--quiet"]) == 1
    assert "n_train" in capsys.readouterr().err
    assert_nothing_written(out)


def test_make_demo_data_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    before = snapshot(out)
    assert make_demo_data.main(["--out", str(out), "--n_train", "2", "--n_val", "1", "--n_test", "1", "--quiet"]) == 1
    assert str(out) in capsys.readouterr().err
    assert snapshot(out) == before
    assert not leftovers(tmp_path)


# ----------------------------------------------------------------------------------------------------------
# a run directory that already holds a run: refuse or resume, never mix
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def finished_run(good_cfg, tmp_path) -> tuple[dict, Path]:
    """A finished 2-step run in ``tmp_path/run`` and its config."""
    run_pretrain(tmp_path, good_cfg)
    return good_cfg, tmp_path / "run"


def test_run_dir_with_a_different_config_is_refused_untouched(finished_run, tmp_path):
    cfg, run = finished_run
    before = snapshot(run)
    cfg.update(learning_rate=0.002, seed=7)
    expect_error(lambda: run_pretrain(tmp_path, cfg), CheckpointError, f"{run} already holds a run with a "
                 "different config", "keys differ: learning_rate, seed", "use a new output_dir")
    assert snapshot(run) == before


def test_run_dir_same_config_without_resume_is_refused_untouched(finished_run, tmp_path):
    cfg, run = finished_run
    before = snapshot(run)
    expect_error(lambda: run_pretrain(tmp_path, cfg, "--resume", "none"), CheckpointError,
                 f"{run} already holds this run", "set resume to 'auto'")
    assert snapshot(run) == before


def test_run_dir_same_config_resumes_without_mixing(finished_run, tmp_path):
    cfg, run = finished_run
    ckpt_before = snapshot(run / "ckpt")
    run_pretrain(tmp_path, cfg)  # resume 'auto': the run is complete, so nothing is trained
    assert snapshot(run / "ckpt") == ckpt_before
    log = (run / "log.txt").read_text(encoding="utf-8")
    assert "resumed from step 2" in log and log.count("step 1:") == 1


def test_run_dir_with_corrupt_hps_is_refused(finished_run, tmp_path):
    cfg, run = finished_run
    (run / "hps.json").write_text('{"seed": 42,', encoding="utf-8")
    before = snapshot(run)
    expect_error(lambda: run_pretrain(tmp_path, cfg), CheckpointError, f"{run / 'hps.json'}: invalid JSON at line 1")
    assert snapshot(run) == before


def test_run_dir_with_truncated_train_state_is_refused(finished_run, tmp_path):
    cfg, run = finished_run
    state = truncate(run / "ckpt" / "train_state_step_2.pt")
    before = snapshot(run / "ckpt")
    expect_error(lambda: run_pretrain(tmp_path, cfg), CheckpointError, f"checkpoint file {state} is unreadable")
    assert snapshot(run / "ckpt") == before
    assert not leftovers(run)
    # the failed run's logger is closed: later warnings of this process stay out of the run's log.txt
    logging.getLogger("data.img_db").warning("a warning after the failed resume")
    assert "after the failed resume" not in (run / "log.txt").read_text(encoding="utf-8")


def test_train_vqa_into_a_pretraining_run_dir_is_refused_untouched(root, tmp_path):
    """train_vqa.py pointed at a directory holding another run (here the setup's pretraining run)."""
    run = tmp_path / "pretrain_copy"
    shutil.copytree(root / "pretrain", run)
    before = snapshot(run)
    expect_error(lambda: train_vqa.main(_vqa_argv(root, run)), CheckpointError,
                 f"{run} already holds a run with a different config")
    assert snapshot(run) == before, sorted(set(snapshot(run)) - set(before))


# ----------------------------------------------------------------------------------------------------------
# the scripts as users run them: a one-line "error: ..." exit, not a traceback
# ----------------------------------------------------------------------------------------------------------
def _script_cases(root: Path, tmp: Path, repo: Path) -> dict[str, tuple[str, list[str], str]]:
    """name -> (script, argv, expected start of the exit message after 'error: ')."""
    bad_json = tmp / "bad.json"
    bad_json.write_text('{"output_dir": "x",,}', encoding="utf-8")
    truncated = truncate(Path(shutil.copy(root / "pretrain" / "model_final.pt", tmp / "model.pt")))
    spec = {"name": "en", "txt_db": str(root / "data/txt_db/cap_en_test.db"),
            "img_db": str(root / "data/img_db/demo_imgs"), "dataset": "demo", "lang": "en"}
    eval_cfg = write_json(tmp / "eval.json", {"output_dir": str(tmp / "eval"), "checkpoint": str(truncated),
                                              "model_config": str(root / "pretrain/model.json"),
                                              "test_datasets": [spec], "min_bb": 3})
    itm = ["--config", str(repo / "config" / "itm_demo_en_only.json"), "--output_dir", str(tmp / "itm"),
           "--train_datasets.0.txt_db", str(tmp / "nope.db")]
    inf = ["--txt_db", str(root / "data/txt_db/vqa_en_val.db"), "--output", str(tmp / "p.json"),
           "--ans2label", str(tmp / "nope.json"), "--model_config", str(root / "pretrain/model.json"),
           "--checkpoint", str(truncated), "--img_db", str(root / "data/img_db/demo_imgs")]
    return {
        "pretrain_bad_json": ("pretrain.py", ["--config", str(bad_json)], f"{bad_json}:1:"),
        "pretrain_foreign_run_dir": ("pretrain.py", ["--config", str(root / "pretrain.json"), "--seed", "7"],
                                     f"{root / 'pretrain'} already holds a run"),
        "train_vqa_no_answer_file": ("train_vqa.py",
                                     _vqa_argv(root, tmp / "vqa", "--ans2label", str(tmp / "nope.json")),
                                     f"ans2label file {tmp / 'nope.json'} does not exist"),
        "inf_vqa_no_answer_file": ("inf_vqa.py", inf, f"ans2label file {tmp / 'nope.json'} does not exist"),
        "train_itm_missing_txt_db": ("train_itm.py", itm, f"text db {tmp / 'nope.db'}: directory not found"),
        "inf_itm_truncated_checkpoint": ("inf_itm.py", ["--config", str(eval_cfg)], f"{truncated}: not a readable"),
    }


@pytest.mark.parametrize("case", [
    "pretrain_bad_json",
    "pretrain_foreign_run_dir",
    "train_vqa_no_answer_file",
    "inf_vqa_no_answer_file",
    "train_itm_missing_txt_db",
    "inf_itm_truncated_checkpoint",
])
def test_script_exits_with_one_line_error(case, root, tmp_path, repo_root, monkeypatch):
    script, argv, start = _script_cases(root, tmp_path, repo_root)[case]
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(repo_root / script), run_name="__main__")
    assert isinstance(info.value.code, str) and info.value.code.startswith(f"error: {start}"), info.value.code
    assert not leftovers(tmp_path)
