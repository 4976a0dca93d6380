"""Distributed plumbing on CPU (gloo): collectives, 2 ranks == 1 process with the double batch, dead ranks."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests._toy_tasks import build, collectives_worker, main as toy_main
from utils.checkpoint import load_torch_file
from utils.distributed import DistInfo, all_gather_object, all_reduce_grads, all_reduce_mean, detect_launcher

TOY = Path(__file__).resolve().parent / "_toy_tasks.py"
ARGS = ["--num_train_steps", "5", "--warmup_steps", "1", "--learning_rate", "0.01", "--save_steps", "0",
        "--valid_steps", "0", "--log_steps", "5", "--dropout", "0.0", "--gradient_accumulation_steps", "2"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch_ranks(world: int, *extra: str, script: Path = TOY) -> list[subprocess.Popen]:
    """What torchrun would do: one process per rank of ``script`` with RANK/WORLD_SIZE/MASTER_* set."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, PYTHONPATH=str(TOY.parents[1]), OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
        procs.append(subprocess.Popen([sys.executable, str(script), *extra], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


def test_detect_launcher_from_environment():
    assert detect_launcher({}) == DistInfo(1, 0, 0, "none")
    assert detect_launcher({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == DistInfo(4, 3, 1, "torchrun")
    assert detect_launcher({"HOROVOD_SIZE": "2", "HOROVOD_RANK": "1", "HOROVOD_LOCAL_RANK": "1"}) == \
        DistInfo(2, 1, 1, "horovod")
    assert detect_launcher({"OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_RANK": "5",
                            "OMPI_COMM_WORLD_LOCAL_RANK": "1"}) == DistInfo(8, 5, 1, "horovod")
    assert detect_launcher({"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}) == \
        DistInfo(2, 1, 0, "slurm")
    assert detect_launcher({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}).launcher == "none"


def test_single_process_collectives_are_identity():
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.tensor([1.0, 3.0])
    all_reduce_grads([p])
    assert torch.equal(p.grad, torch.tensor([1.0, 3.0]))
    assert torch.equal(all_reduce_mean(torch.tensor([2.0])), torch.tensor([2.0]))
    assert all_gather_object("x") == ["x"]


def test_collectives_on_two_gloo_ranks(tmp_path):
    mp.spawn(collectives_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert torch.equal(r0["weight"], r1["weight"])  # broadcast_params: rank 1 now has rank 0's weights
    for res in (r0, r1):
        assert torch.equal(res["only_rank0"], torch.tensor([1.0, 2.0]))  # a missing grad counts as zeros
        assert res["nobody"] is None  # untouched everywhere stays None, as in one process
        assert torch.equal(res["everyone"], torch.tensor([1.5, 1.5]))
        assert torch.equal(res["mean"], torch.tensor([0.5]))
        assert res["gathered"] == [{"rank": 0}, {"rank": 1}]
    assert (r0["is_main"], r1["is_main"]) == (True, False)


@pytest.mark.multirank
def test_two_ranks_equal_one_process_with_double_batch(tmp_path):
    procs = _launch_ranks(2, "--output_dir", str(tmp_path / "two"), "--batch", "3", *ARGS,
                          "--dump_params", str(tmp_path / "rank{rank}.pt"))
    single = toy_main(["--output_dir", str(tmp_path / "one"), "--batch", "6", *ARGS])
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    saved = load_torch_file(tmp_path / "two" / "ckpt" / "model_step_5.pt")
    start = build(single.cfg, 6)[0].state_dict()
    for key, value in single.model.state_dict().items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # ranks stay identical
        assert torch.allclose(ranks[0][key], value, atol=1e-6, rtol=0), key
        assert torch.equal(saved[key], ranks[0][key])
    assert any(not torch.allclose(start[k], v) for k, v in single.model.state_dict().items())  # it trained


def test_dead_rank_makes_the_other_exit_with_clear_message(tmp_path):
    procs = _launch_ranks(2, "--output_dir", str(tmp_path / "run"), *ARGS, "--num_train_steps", "50",
                          "--die_rank", "1", "--die_step", "2", "--dist_timeout_s", "10")
    start = time.monotonic()
    results = [proc.communicate(timeout=90) for proc in procs]
    elapsed = time.monotonic() - start
    assert procs[1].returncode == 3
    assert procs[0].returncode not in (0, None)
    assert "another rank probably died" in results[0][1], results[0][1][-3000:]
    assert elapsed < 60


def test_hung_rank_makes_the_other_fail_after_the_timeout(tmp_path):
    procs = _launch_ranks(2, "--output_dir", str(tmp_path / "run"), *ARGS, "--num_train_steps", "50",
                          "--die_rank", "1", "--die_step", "2", "--die_mode", "hang", "--dist_timeout_s", "4")
    try:
        start = time.monotonic()
        _, err = procs[0].communicate(timeout=90)
        elapsed = time.monotonic() - start
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode not in (0, None)
    assert "rank 0/2: all_reduce failed" in err, err[-3000:]
    assert elapsed < 60
