"""scripts/gpu_check.py on a machine without CUDA: a clear refusal, and the --device cpu --tiny dry run of
the same code (both precisions, the resume, retrieval scoring, the JSON figures)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the check itself")
def test_without_cuda_it_refuses_with_a_clear_message():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no CUDA device available" in done.stderr and "--device cpu --tiny" in done.stderr
    bad = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "only the --tiny dry run" in bad.stderr


def test_cpu_tiny_dry_run_reports_every_figure(tmp_path):
    out = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--steps", "8", "--workers", "0",
                           "--out", str(out)], capture_output=True, text=True, timeout=600,
                          env={"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                               "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["resume"] == {"resumed_from_step": 4, "finished_step": 8, "ok": True}
    for precision in ("fp16", "bf16"):
        fig = report[precision]
        assert fig["steps_timed"] >= 1 and fig["step_s_median"] > 0 and fig["tokens_per_s"] > 0
        assert fig["model_tflops_per_s"] > 0 and fig["mfu"] is None  # no published peak for a CPU
    assert report["fp16"]["grad_scaler"] and not report["bf16"]["grad_scaler"]
    assert report["retrieval"]["pairs"] == 24 and report["retrieval"]["pairs_per_s"] > 0
