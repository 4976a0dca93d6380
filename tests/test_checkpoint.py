"""Atomic checkpoint files, pruning, corrupt-file errors and run-directory refusal."""
import json

import pytest
import torch

from utils import checkpoint as ck
from utils.checkpoint import (CheckpointError, CheckpointManager, atomic_torch_save, diff_configs,
                              load_torch_file, prepare_run_dir)


def _state(value: float) -> dict:
    return {"w": torch.full((3,), value, dtype=torch.float16), "n": torch.tensor([1, 2])}


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    atomic_torch_save({"v": torch.ones(2)}, path)

    def broken_save(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"v": torch.zeros(2)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind
    monkeypatch.undo()
    assert torch.equal(load_torch_file(path)["v"], torch.ones(2))  # the old file is intact


def test_save_load_prune_latest(tmp_path):
    mgr = CheckpointManager(tmp_path / "ckpt", keep_last=2)
    assert mgr.latest() is None
    for step in (10, 20, 30):
        mgr.save(step, _state(step), {"step": step, "consumed": {"a": step}})
    assert mgr.steps() == [20, 30] and mgr.latest() == 30
    assert sorted(p.name for p in mgr.dir.iterdir()) == [
        "model_step_20.pt", "model_step_30.pt", "train_state_step_20.pt", "train_state_step_30.pt"]
    model, train = mgr.load(30)
    assert model["w"].dtype == torch.float32 and torch.all(model["w"] == 30)  # model files are fp32
    assert model["n"].dtype == torch.int64 and train["consumed"] == {"a": 30}


def test_the_model_to_evaluate_is_the_best_else_the_newest_complete_step(tmp_path):
    mgr = CheckpointManager(tmp_path / "ckpt")
    assert mgr.best_or_latest_model() is None
    mgr.save(10, _state(1), {"step": 10})
    (mgr.dir / "model_step_20.pt").write_bytes(b"")          # no train state: an incomplete step
    assert mgr.best_or_latest_model() == mgr.dir / "model_step_10.pt"
    mgr.save_best(_state(2), {"metric": "m", "value": 1.0, "step": 10})
    assert mgr.best_or_latest_model() == mgr.dir / "model_best.pt"


def test_incomplete_step_is_not_latest(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    mgr.save(1, _state(1), {"step": 1})
    atomic_torch_save(_state(2), tmp_path / "model_step_2.pt")  # crashed before its train state
    assert mgr.latest() == 1


def test_corrupt_file_gives_clear_error(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(5, _state(5), {"step": 5})
    path = tmp_path / "train_state_step_5.pt"
    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.raises(CheckpointError, match=r"train_state_step_5\.pt is unreadable \(truncated or corrupt\?\)"):
        mgr.load(5)
    with pytest.raises(CheckpointError, match=r"model_step_9\.pt does not exist"):
        mgr.load(9)


def test_untrusted_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": object()}, path)  # not loadable with weights_only=True
    with pytest.raises(CheckpointError, match="evil.pt is unreadable"):
        load_torch_file(path)


def test_best_model(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save_best(_state(1), {"metric": "itm/r_mean", "value": 0.5, "step": 3})
    assert mgr.best_info() == {"metric": "itm/r_mean", "value": 0.5, "step": 3}
    assert torch.all(load_torch_file(tmp_path / "model_best.pt")["w"] == 1)


def test_run_dir_refuses_different_config(tmp_path):
    hps = {"seed": 1, "learning_rate": 1e-4, "resume": "auto", "train_datasets": [{"name": "a", "db": ["x"]}]}
    out = prepare_run_dir(tmp_path / "run", hps, {"hidden_size": 32})
    assert json.loads((out / "hps.json").read_text()) == hps
    assert json.loads((out / "model.json").read_text()) == {"hidden_size": 32}
    assert (out / "git_info.json").is_file()
    # resuming the same run is fine, even with a runtime-only key changed
    prepare_run_dir(out, dict(hps, resume="none", n_workers=8), resuming=True)
    CheckpointManager(out / "ckpt").save(1, _state(1), {"step": 1})  # the run has saved a step now
    changed = dict(hps, learning_rate=5e-5, train_datasets=[{"name": "a", "db": ["y"]}])
    with pytest.raises(CheckpointError, match=r"different config \(keys differ: learning_rate, "
                                              r"train_datasets\)"):
        prepare_run_dir(out, changed, resuming=True)
    with pytest.raises(CheckpointError, match="already holds this run; set resume to 'auto'"):
        prepare_run_dir(out, hps, resuming=False)


def test_run_dir_without_a_saved_step_accepts_a_corrected_config(tmp_path):
    """A start that failed before its first checkpoint left hps.json: the corrected command may start over."""
    hps = {"seed": 1, "learning_rate": 1e-4}
    out = prepare_run_dir(tmp_path / "run", hps)
    fixed = dict(hps, learning_rate=5e-5)
    prepare_run_dir(out, fixed, resuming=False)
    assert json.loads((out / "hps.json").read_text()) == fixed
    (out / "model_final.pt").write_bytes(b"x")  # a finished run is protected again
    with pytest.raises(CheckpointError, match="keys differ: learning_rate"):
        prepare_run_dir(out, hps, resuming=True)


def test_diff_configs_names_nested_keys():
    assert diff_configs({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 1, "c": 5}, "e": 3}) == ["a.c", "d", "e"]
