"""Faults and processes (issue 16): non-finite losses, signals, stale temp files, full disks, run locks,
failed starts, unusable output paths, file modes.

Each case asserts what a user sees (exit status, one line naming the file, no traceback) and what is left
on disk (no temp file, earlier checkpoints unchanged and finite).
"""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests._bad_input_helpers import leftovers, snapshot
from tests._toy_tasks import build
from utils.atomic import atomic_torch_save, atomic_write
from utils.checkpoint import CheckpointManager, load_torch_file
from utils.errors import CheckpointError
from utils.faults import (DiskFullError, Interrupted, NonFiniteLossError, RunError, RunLock, RunLockError,
                          check_output_dir, check_output_file, clean_stale_temps)
from evaluation.itm_eval import NonFiniteScoresError, gather_rows
from training.run_config import TrainConfig
from training.setup import cli_outcome
from training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(output_dir=str(tmp_path / "run"), num_train_steps=12, warmup_steps=0, learning_rate=0.02,
                save_steps=2, keep_last=2, valid_steps=0, log_steps=1, dropout=0.0, weight_decay=0.0)
    base.update(kw)
    return TrainConfig(**base)


def _trainer(cfg, nan_from_step: int | None = None, **kw) -> Trainer:
    model, tasks = build(cfg, batch_size=8)
    if nan_from_step is not None:
        for task in tasks:
            task.compute_loss = _poisoned(task.compute_loss, nan_from_step, kw.pop("poison", "nan"))
    trainer = Trainer(model, tasks, cfg, device=torch.device("cpu"), **kw)
    for task in tasks:
        task.trainer = trainer
    return trainer


def _poisoned(compute_loss, from_step: int, kind: str):
    """The loss turns NaN/Inf (as from NaN features) from optimizer step ``from_step`` (1-based) on."""
    bad = {"nan": float("nan"), "inf": float("inf")}[kind]

    def wrapped(model, batch):
        loss, logs = compute_loss(model, batch)
        trainer = compute_loss.__self__.trainer
        return (loss * bad if trainer.step + 1 >= from_step else loss), logs
    return wrapped


def _ckpt_files(run: Path) -> dict:
    return snapshot(run / "ckpt")


# ------------------------------------------------------------------------------------------ non-finite
@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_non_finite_losses_stop_the_run_and_keep_the_good_checkpoints(tmp_path, kind):
    cfg = _cfg(tmp_path, max_nonfinite_steps=3)
    trainer = _trainer(cfg, nan_from_step=6, poison=kind)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train()
    message = str(info.value)
    assert "training stopped at step 8" in message and "3 consecutive steps" in message
    assert f"step 4 in {trainer.ckpt.dir}" in message and "kept unchanged" in message
    # keep_last=2 still holds the last two finite checkpoints: nothing was rotated out by NaN saves
    assert trainer.ckpt.steps() == [2, 4]
    for step in (2, 4):
        weights = load_torch_file(trainer.ckpt.dir / f"model_step_{step}.pt")
        assert all(torch.isfinite(v).all() for v in weights.values())
    # the weights in memory were never touched by the skipped steps
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert not leftovers(Path(cfg.output_dir))
    assert not (Path(cfg.output_dir) / ".run.lock").exists(), "the run lock must be released on failure"


def test_isolated_non_finite_steps_are_skipped_and_training_goes_on(tmp_path):
    cfg = _cfg(tmp_path, max_nonfinite_steps=3, num_train_steps=10)
    model, tasks = build(cfg, batch_size=8)
    calls = {"n": 0}
    orig = tasks[0].compute_loss

    def sometimes_nan(m, batch):
        calls["n"] += 1
        loss, logs = orig(m, batch)
        return (loss * float("nan") if calls["n"] in (2, 3) else loss), logs
    tasks[0].compute_loss = sometimes_nan
    trainer = Trainer(model, tasks, cfg, device=torch.device("cpu"))
    trainer.train()
    assert trainer.step == 10 and trainer.ckpt.latest() == 10
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert "step skipped (2 in a row)" in (Path(cfg.output_dir) / "log.txt").read_text()


def test_nan_weights_are_never_saved(tmp_path):
    cfg = _cfg(tmp_path, num_train_steps=4, save_steps=2)
    trainer = _trainer(cfg)
    trainer.train()
    before = _ckpt_files(Path(cfg.output_dir))
    with torch.no_grad():
        next(trainer.model.parameters())[0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"not saving step 4: parameters \['body\.0\.weight'\] hold NaN"):
        trainer.save()
    assert _ckpt_files(Path(cfg.output_dir)) == before


def test_max_nonfinite_steps_is_checked():
    with pytest.raises(Exception, match="max_nonfinite_steps: expected >= 0, got -1"):
        TrainConfig(output_dir="x", max_nonfinite_steps=-1)


def test_scoring_tells_nan_scores_from_unscored_rows():
    rows = np.arange(3)
    scores = np.ones((3, 4), np.float32)
    scores[1, 2] = np.nan
    with pytest.raises(NonFiniteScoresError, match="1 of 3 caption rows hold NaN/Inf scores"):
        gather_rows(rows, scores, 3)
    with pytest.raises(RuntimeError, match="1 caption rows were scored by no rank"):
        gather_rows(rows[:2], np.ones((2, 4), np.float32), 3)
    np.testing.assert_array_equal(gather_rows(rows, np.ones((3, 4), np.float32), 3), np.ones((3, 4)))


# ------------------------------------------------------------------------------------------ signals
def _toy_cli(tmp_path: Path, *extra: str) -> list[str]:
    code = ("import sys; sys.path.insert(0, %r); from training.setup import run_cli; "
            "from tests._toy_tasks import main; run_cli(lambda: main(sys.argv[1:]))" % str(REPO))
    return [sys.executable, "-c", code, "--output_dir", str(tmp_path / "run"), "--num_train_steps", "50",
            "--warmup_steps", "0", "--save_steps", "1", "--keep_last", "2", "--valid_steps", "0",
            "--n_workers", "0", *extra]


@pytest.mark.parametrize("sig, status, name", [(signal.SIGTERM, 143, "SIGTERM"),
                                               (signal.SIGINT, 130, "SIGINT (Ctrl-C)")])
def test_signal_stops_the_run_with_one_line_and_intact_checkpoints(tmp_path, sig, status, name):
    proc = subprocess.Popen(_toy_cli(tmp_path, "--hang_after_step", "3"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        for line in proc.stdout:  # the toy prints HANG 3 once step 3 is saved
            if line.startswith("HANG"):
                break
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    run = tmp_path / "run"
    assert proc.returncode == status, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith(f"interrupted by {name}") and "train_state_step_3.pt" in last, last
    assert CheckpointManager(run / "ckpt").steps() == [2, 3]
    assert load_torch_file(run / "ckpt" / "model_step_3.pt")
    assert not leftovers(run) and not (run / ".run.lock").exists()


def test_interrupted_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "model_step_2.pt"
    atomic_torch_save({"w": torch.ones(2)}, path)

    def interrupted(fh):
        fh.write(b"partial bytes")
        raise Interrupted(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted)
    assert torch.equal(load_torch_file(path)["w"], torch.ones(2))
    assert not leftovers(tmp_path)


# ------------------------------------------------------------------------------------------ stray files
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class _Stop(Exception):
    """Raised by a callback: the run "dies" right after a step was saved."""


def _run_until(cfg, stop_step: int) -> None:
    def stop(trainer):
        if trainer.step == stop_step:
            raise _Stop
    model, tasks = build(cfg, batch_size=8)
    with pytest.raises(_Stop):
        Trainer(model, tasks, cfg, device=torch.device("cpu"), callbacks=[stop]).train()


def test_resume_removes_temp_files_of_dead_writers_and_orphan_models(tmp_path):
    cfg = _cfg(tmp_path, num_train_steps=6)
    _run_until(cfg, 4)
    ckpt = Path(cfg.output_dir) / "ckpt"
    dead, alive = _dead_pid(), os.getppid()
    stale = [ckpt / f".model_step_6.pt.tmp-{dead}", Path(cfg.output_dir) / f".hps.json.tmp-{dead}"]
    live = ckpt / f".model_step_6.pt.tmp-{alive}"
    orphan = ckpt / "model_step_5.pt"  # killed between the model file and its train state
    for path in [*stale, live, orphan]:
        path.write_bytes(b"x" * 1000)
    step4 = snapshot(ckpt)
    step4 = {k: v for k, v in step4.items() if k.endswith("_step_4.pt")}
    _trainer(cfg).train()  # the same command again: resume auto
    assert not any(p.exists() for p in [*stale, orphan])
    assert live.exists(), "a temp file of a live process may be a write in progress: never touch it"
    assert all(snapshot(ckpt)[k] == v for k, v in step4.items()), "resume must not rewrite step 4"
    assert CheckpointManager(ckpt).steps() == [4, 6]


def test_clean_stale_temps_also_removes_build_folders(tmp_path):
    dead = _dead_pid()
    folder = tmp_path / f"coco_en.db.tmp-{dead}"
    folder.mkdir()
    (folder / "data.mdb").write_bytes(b"x")
    assert clean_stale_temps(tmp_path) == [folder]
    assert not folder.exists()


# ------------------------------------------------------------------------------------------ disk full
def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_during_a_checkpoint_names_the_file_and_keeps_the_last_ones(tmp_path, monkeypatch, capsys):
    cfg = _cfg(tmp_path, num_train_steps=6)
    real_save, calls = torch.save, {"n": 0}

    def save_until_full(obj, fh, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:  # steps 2 and 4 write two files each; step 6 finds the disk full
            _enospc()
        return real_save(obj, fh, *args, **kwargs)
    monkeypatch.setattr(torch, "save", save_until_full)
    assert cli_outcome(lambda: _trainer(cfg).train()) == 1
    err = capsys.readouterr().err
    run = Path(cfg.output_dir)
    assert f"error: disk full: {run / 'ckpt' / 'model_step_6.pt'} could not be written" in err
    assert "Traceback" not in err
    assert CheckpointManager(run / "ckpt").steps() == [2, 4]
    assert all(torch.isfinite(v).all() for v in load_torch_file(run / "ckpt" / "model_step_4.pt").values())
    assert not leftovers(run) and not (run / ".run.lock").exists()


def test_disk_full_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch, "save", _enospc)
    target = tmp_path / "ckpt" / "model_step_2.pt"
    assert cli_outcome(lambda: atomic_torch_save({"w": torch.ones(1)}, target)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: disk full: {target} could not be written") and "Traceback" not in err
    assert not leftovers(tmp_path)
    with pytest.raises(DiskFullError):
        atomic_torch_save({"w": torch.ones(1)}, target)


def test_prepro_on_a_full_disk_leaves_no_build_folder(tmp_path, monkeypatch, capsys):
    import prepro
    from utils import atomic
    from tests.helpers import make_tiny_tokenizer

    tok = make_tiny_tokenizer(tmp_path)
    src = tmp_path / "caps.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "img_fname": f"i{i}.npz", "lang": "en",
                                       "caption": "a red cube"}) + "\n" for i in range(3)), encoding="utf-8")
    monkeypatch.setattr(atomic, "_publish", _enospc)  # the final rename of the build folder finds the disk full
    status = prepro.main(["captions", "--input", str(src), "--output", str(tmp_path / "txt"), "--tokenizer",
                          str(tok), "--no_progress"])
    err = capsys.readouterr().err
    assert status == 2 and "disk full: " in err and "caps_en.db" in err
    assert not leftovers(tmp_path / "txt")


# ------------------------------------------------------------------------------------------ run lock
def test_second_run_on_one_output_dir_is_refused(tmp_path):
    cfg = _cfg(tmp_path, num_train_steps=2)
    with RunLock(cfg.output_dir):
        with pytest.raises(RunLockError, match=rf"is in use by process {os.getpid()} on this host"):
            _trainer(cfg).train()
    assert not (Path(cfg.output_dir) / "ckpt").exists(), "the refused run wrote checkpoints"


def test_lock_of_a_dead_process_is_taken_over_and_another_host_refused(tmp_path, caplog):
    lock_file = tmp_path / "run" / RunLock.NAME
    lock_file.parent.mkdir()
    lock_file.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "since": "then"}))
    cfg = _cfg(tmp_path, num_train_steps=2)
    _trainer(cfg).train()
    assert "taking over the lock of process" in caplog.text
    assert not lock_file.exists()
    lock_file.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "since": "then"}))
    with pytest.raises(RunLockError, match=r"process 1 on host elsewhere\.example .*delete .*\.run\.lock"):
        RunLock(tmp_path / "run").acquire()


# ------------------------------------------------------------------------------------------ failed starts
def test_a_start_that_failed_before_any_step_does_not_block_the_corrected_command(tmp_path):
    cfg = _cfg(tmp_path, num_train_steps=3)
    trainer = _trainer(cfg)

    def broken(model, batch):
        raise ValueError("bad batch")
    for task in trainer.tasks:
        task.compute_loss = broken
    with pytest.raises(ValueError):
        trainer.train()
    assert (Path(cfg.output_dir) / "hps.json").is_file()
    fixed = _cfg(tmp_path, num_train_steps=3, learning_rate=0.01)
    _trainer(fixed).train()
    assert json.loads((Path(cfg.output_dir) / "hps.json").read_text())["learning_rate"] == 0.01
    # once a step is saved, the directory is protected again
    with pytest.raises(CheckpointError, match="different config"):
        _trainer(_cfg(tmp_path, num_train_steps=3, learning_rate=0.5))


# ------------------------------------------------------------------------------------------ output paths
def test_output_paths_are_checked_before_any_work(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(RunError, match=rf"output_dir {a_file}: is a file"):
        check_output_dir(a_file)
    with pytest.raises(RunError, match=rf"{a_file}.* is a file, so the directory cannot be created"):
        check_output_dir(a_file / "run")
    with pytest.raises(RunError, match=r"--output .*: is a directory"):
        check_output_file(tmp_path, "--output")
    with pytest.raises(RunError, match="a parent of it is a file"):
        check_output_file(a_file / "out.json", "--output")
    assert check_output_file(tmp_path / "new" / "deep" / "out.json") == tmp_path / "new" / "deep" / "out.json"
    with pytest.raises(RunError, match=rf"output_dir {a_file}: is a file"):
        _trainer(_cfg(tmp_path, output_dir=str(a_file)))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(RunError, match="is not writable"):
        check_output_file(locked / "out.json")


# ------------------------------------------------------------------------------------------ file modes
def test_results_and_plots_are_written_with_the_usual_mode(tmp_path):
    from evaluation.results_table import write_tables

    old = os.umask(0o022)
    try:
        md, js = write_tables(tmp_path, include_paper=False)
    finally:
        os.umask(old)
    for path in (md, js):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# ------------------------------------------------------------------------------------------ resume across sizes
def test_resume_into_a_model_of_another_size_names_file_and_shapes(tmp_path):
    from tests._toy_tasks import ToyModel

    cfg = _cfg(tmp_path, num_train_steps=6)
    _run_until(cfg, 4)
    before = _ckpt_files(Path(cfg.output_dir))
    _, tasks = build(cfg, batch_size=8)
    wider = Trainer(ToyModel(hidden=24), tasks, cfg, device=torch.device("cpu"))
    status = cli_outcome(wider.train)
    assert status == 1
    with pytest.raises(CheckpointError, match=r"resume: .*model_step_4\.pt is from a model of another size \(\d+ "
                                              r"shape\(s\) differ \(checkpoint vs model\): body\.0\.weight \(16, 4\) "
                                              r"vs \(24, 4\)"):
        Trainer(ToyModel(hidden=24), tasks, cfg, device=torch.device("cpu")).train()
    assert _ckpt_files(Path(cfg.output_dir)) == before


def test_prepro_output_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    import prepro

    target = tmp_path / "vqa.db"
    target.write_text("not a folder")
    src = tmp_path / "vqa.jsonl"
    src.write_text(json.dumps({"question_id": 1, "img_fname": "a.npz", "lang": "en", "question": "what?",
                               "answers": ["red"]}) + "\n", encoding="utf-8")
    status = prepro.main(["vqa", "--input", str(src), "--output", str(target), "--tokenizer",
                          str(tmp_path / "no_tokenizer_needed_yet")])
    assert status == 2
    assert f"error: --output {target}: is a file, expected a directory" in capsys.readouterr().err
    assert target.read_text() == "not a folder"
