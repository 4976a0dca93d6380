"""Distributed training at scale on CPU (gloo): per-rank RNG on resume, world-size changes refused, the best
model visible to every rank, and dying/stalled ranks or a full disk leaving a loadable last checkpoint."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests._toy_tasks import main as toy_main
from utils.checkpoint import CheckpointManager, load_torch_file
from utils.errors import CheckpointError

pytestmark = pytest.mark.multirank

TOY = Path(__file__).resolve().parent / "_toy_tasks.py"
# dropout > 0: each rank draws its own masks, so a rank restored with another rank's RNG would diverge
ARGS = ["--num_train_steps", "4", "--warmup_steps", "1", "--learning_rate", "0.01", "--save_steps", "2",
        "--valid_steps", "0", "--log_steps", "2", "--dropout", "0.3", "--batch", "3", "--dist_timeout_s", "20"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_ranks(world: int, *args: str, timeout: float = 120) -> list[tuple[int, str]]:
    """Start ``world`` toy ranks as torchrun would; (return code, stderr) of each."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, PYTHONPATH=str(TOY.parents[1]), OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
        procs.append(subprocess.Popen([sys.executable, str(TOY), *args], env=env, text=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    results = []
    try:
        for proc in procs:
            # once a rank failed, a stalled one is not waited for (it sleeps until killed)
            wait = timeout if all(code == 0 for code, _ in results) else 15
            try:
                _, err = proc.communicate(timeout=wait)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            results.append((proc.returncode, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


def _ok(results: list[tuple[int, str]]) -> None:
    for code, err in results:
        assert code == 0, err[-3000:]


def _assert_loadable(ckpt_dir: Path, step: int) -> None:
    """Step ``step`` is the newest complete checkpoint, it loads, and no temporary file is left."""
    mgr = CheckpointManager(ckpt_dir)
    assert mgr.latest() == step
    model, state = mgr.load(step)
    assert state["step"] == step and model
    assert not [p.name for p in ckpt_dir.iterdir() if ".tmp-" in p.name]


def test_two_rank_resume_restores_each_ranks_rng(tmp_path):
    _ok(_run_ranks(2, "--output_dir", str(tmp_path / "full"), *ARGS, "--dump_params", str(tmp_path / "full{rank}.pt")))
    _ok(_run_ranks(2, "--output_dir", str(tmp_path / "cut"), *ARGS, "--stop_after_step", "2"))
    _assert_loadable(tmp_path / "cut" / "ckpt", 2)
    _ok(_run_ranks(2, "--output_dir", str(tmp_path / "cut"), *ARGS, "--dump_params", str(tmp_path / "cut{rank}.pt")))
    full, cut = (torch.load(tmp_path / f"{name}0.pt", weights_only=True) for name in ("full", "cut"))
    for key, value in full.items():
        assert torch.equal(cut[key], value), key  # bit-for-bit: the dropout streams of both ranks resumed
    state = CheckpointManager(tmp_path / "cut" / "ckpt").load(2)[1]
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["cpu"], state["rng"][1]["cpu"])


def test_resume_with_another_world_size_is_refused_naming_both(tmp_path):
    _ok(_run_ranks(2, "--output_dir", str(tmp_path / "run"), *ARGS, "--stop_after_step", "2"))
    with pytest.raises(CheckpointError, match=r"world size 2, this run has world size 1"):
        toy_main(["--output_dir", str(tmp_path / "run"), *ARGS])
    _assert_loadable(tmp_path / "run" / "ckpt", 2)  # the refused resume wrote nothing


def test_best_model_is_complete_for_every_rank_after_the_last_validation(tmp_path):
    # valid every 3 steps of 4: the last validation (step 4, at the end) comes after the last save (step 4,
    # from save_steps 2), and rank 0 writes model_best.pt slowly; every rank reads it right after train().
    # The metric (a validation counter, kept by maximum) makes every validation a new best.
    args = [*ARGS, "--valid_steps", "3", "--best_metric", "reg_a/validations", "--best_mode", "max",
            "--slow_best_write", "2", "--dump_best", str(tmp_path / "best{rank}.pt"),
            "--dump_params", str(tmp_path / "final{rank}.pt")]
    _ok(_run_ranks(2, "--output_dir", str(tmp_path / "run"), *args))
    seen = [torch.load(tmp_path / f"best{r}.pt", weights_only=True) for r in range(2)]
    final = torch.load(tmp_path / "final0.pt", weights_only=True)
    for rank in range(2):
        assert seen[rank]["info"]["step"] == 4, seen[rank]["info"]  # the step-4 best, not step 3's
        for key, value in final.items():
            assert torch.equal(seen[rank]["model"][key], value), key


@pytest.mark.parametrize("mode", ["exit", "hang"])
def test_dying_or_stalled_rank_ends_the_run_and_leaves_the_last_checkpoint(tmp_path, mode):
    args = [*ARGS, "--num_train_steps", "50", "--save_steps", "1", "--die_rank", "1", "--die_step", "3",
            "--die_mode", mode, "--dist_timeout_s", "5"]
    results = _run_ranks(2, "--output_dir", str(tmp_path / "run"), *args)
    assert results[0][0] not in (0, None)
    assert "another rank probably died or did not reach it within the timeout" in results[0][1], results[0][1][-3000:]
    _assert_loadable(tmp_path / "run" / "ckpt", 3)


def test_full_disk_during_checkpoint_ends_the_run_clearly(tmp_path):
    results = _run_ranks(2, "--output_dir", str(tmp_path / "run"), *ARGS, "--save_steps", "1",
                         "--disk_full_step", "3", "--dist_timeout_s", "10")
    assert results[0][0] != 0 and results[1][0] != 0
    assert "disk full: " in results[0][1] and "could not be written" in results[0][1], results[0][1][-3000:]
    assert "the last complete checkpoint is step 2 and is still loadable" in results[0][1]
    _assert_loadable(tmp_path / "run" / "ckpt", 2)
