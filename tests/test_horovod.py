"""horovod executed, not only importable: ``horovodrun -np 2 --gloo`` trains the shared Trainer to the same
weights as two torchrun-style gloo ranks and as one process with the doubled batch (tests/test_pretrain.py
runs pretrain.py itself under horovodrun)."""
import os
import subprocess
import sys

import pytest
import torch

from tests._toy_tasks import main as toy_main
from tests.helpers import horovodrun_or_skip
from tests.test_distributed import ARGS, TOY, _launch_ranks


@pytest.mark.multirank
def test_horovodrun_two_ranks_equal_torchrun_and_one_process_with_double_batch(tmp_path):
    horovodrun = horovodrun_or_skip()
    env = dict(os.environ, PYTHONPATH=str(TOY.parents[1]), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    hvd = subprocess.run([*horovodrun, sys.executable, str(TOY), "--output_dir", str(tmp_path / "hvd"), "--batch", "3",
                          *ARGS, "--dump_params", str(tmp_path / "hvd{rank}.pt")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert hvd.returncode == 0, (hvd.stdout + hvd.stderr)[-3000:]
    procs = _launch_ranks(2, "--output_dir", str(tmp_path / "torch"), "--batch", "3", *ARGS,
                          "--dump_params", str(tmp_path / "torch{rank}.pt"))
    single = toy_main(["--output_dir", str(tmp_path / "one"), "--batch", "6", *ARGS]).model.state_dict()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    hvd0, hvd1, torch0 = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("hvd0", "hvd1", "torch0"))
    assert torch.load(tmp_path / "hvd" / "ckpt" / "train_state_step_5.pt", weights_only=True)["world_size"] == 2
    for key, value in single.items():
        assert torch.equal(hvd0[key], hvd1[key]), key                 # horovod ranks stay identical
        assert torch.equal(hvd0[key], torch0[key]), key               # horovod sum == gloo sum, bit for bit
        assert torch.allclose(hvd0[key], value, atol=1e-6, rtol=0), key  # == one process, double batch
