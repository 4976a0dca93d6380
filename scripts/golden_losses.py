#!/usr/bin/env python
"""Per-step losses of a 20-step tiny pretraining run (MLM, ITM, MRTM, VTLM; fixed seed; CPU fp32).

``tests/test_golden_losses.py`` reruns it and compares with the committed file **exactly**: any change
to masking, sampling, task draws, the model, the loss or the optimizer shows up as a different number.
When a change is *meant* to alter the numbers, regenerate the file and say why in the commit::

    .venv/bin/python scripts/golden_losses.py --update        # rewrite tests/golden/pretrain_losses.json
    .venv/bin/python scripts/golden_losses.py                 # print the differences only

The run builds a small demo corpus (24 training images, its SentencePiece tokenizer), a random 2-layer
XLM-R stand-in and trains ``pretrain.build_trainer``'s trainer on one thread (about 30 s on one core).
The float kernels differ between CPU generations (AVX2 / AVX-512 / AMX code paths sum in other orders),
so the last bits of a loss do too: measured, a file made on one Xeon differed from a Sapphire Rapids run of
the same code by at most 1e-7 relative (5 of 20 steps). The file therefore records the CPU it was made on
(:func:`cpu_fingerprint`): on that CPU and torch version the comparison is exact; elsewhere it allows
``CROSS_CPU_RTOL`` relative per loss, far below what a real change does (a different masking rule, task
draw or optimizer step moves losses by 1e-3 or more within 20 steps).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN = REPO_ROOT / "tests" / "golden" / "pretrain_losses.json"
STEPS = 20
#: relative tolerance per loss when the file was made on another CPU or torch version
CROSS_CPU_RTOL = 1e-5
SOURCES = {"cap_en": ("cap_en", ["mlm", "itm", "mrtm"], [1, 1, 1]),
           "paired_en-de": ("paired_en-de", ["vtlm"], [1])}


def build_setup(root: Path) -> None:
    """Demo corpus under ``root/data`` and a random tiny XLM-R under ``root/xlmr`` (deterministic)."""
    from scripts import make_tiny_xlmr
    from scripts.make_demo_data import build_demo_corpus

    data = root / "data"
    build_demo_corpus(data, seed=42, n_train=24, n_val=4, n_test=2, progress=False)
    make_tiny_xlmr.main(["--tokenizer", str(data / "tokenizer"), "--text", str(data / "raw" / "captions_train.jsonl"),
                         "--out", str(root / "xlmr"), "--steps", "0", "--hidden", "32", "--layers", "2",
                         "--heads", "2", "--ffn", "64", "--max_positions", "130", "--seed", "0"])


def run_config(root: Path) -> dict[str, Any]:
    """The pretraining config of the golden run (the library defaults for everything not named here)."""
    data = root / "data"
    datasets = [{"name": name, "db": [str(data / "txt_db" / f"{db}_train.db")], "img": [str(data / "img_db" / "demo_imgs")],
                 "tasks": tasks, "mix_ratio": ratio} for name, (db, tasks, ratio) in SOURCES.items()]
    return {"output_dir": str(root / "run"), "xlmr_dir": str(root / "xlmr"), "tokenizer": str(data / "tokenizer"),
            "label_dir": str(data / "raw" / "labels"), "seed": 7, "precision": "fp32", "learning_rate": 1e-3,
            "warmup_steps": 5, "num_train_steps": STEPS, "train_batch_size": 256, "valid_steps": 0,
            "save_steps": 0, "log_steps": 5, "n_workers": 0, "pin_mem": False, "dropout": 0.1, "min_bb": 3,
            "train_datasets": datasets}


def compute(root: Path) -> list[dict[str, Any]]:
    """Build the set-up under ``root``, train, and return ``[{"step", "task", "loss"}]`` per optimizer step."""
    import torch

    import pretrain
    from utils.config import from_dict
    from training.run_config import PretrainConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the reduction order of the float kernels is fixed
    try:
        build_setup(root)
        cfg = from_dict(PretrainConfig, run_config(root))
        record: list[dict[str, Any]] = []

        def log_loss(trainer) -> None:
            record.append({"step": trainer.step, "task": trainer.last_task,
                           "loss": float(trainer.last_loss)})  # one sync per step is fine here
        pretrain.build_trainer(cfg, callbacks=[log_loss]).train()
    finally:
        torch.set_num_threads(threads)
    return record


def cpu_fingerprint() -> str:
    """What decides the float kernels' last bits: torch version, ATen's CPU capability, the CPU model and
    its vector/matrix extensions."""
    import torch

    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = {f for f in value.split() if f.startswith(("avx", "amx", "fma", "f16c"))}
    except OSError:  # not Linux: the machine name is what is known
        pass
    return " | ".join([f"torch {torch.__version__}", platform.machine(), torch.backends.cpu.get_cpu_capability(),
                       model, " ".join(sorted(flags))])


def differences(expected: list[dict], got: list[dict], rtol: float = 0.0) -> list[str]:
    """Human-readable lines, one per step whose task differs or whose loss differs by more than ``rtol``
    relative (0: exactly); empty when equal."""
    def same(e: dict, g: dict) -> bool:
        return e["step"] == g["step"] and e["task"] == g["task"] and (
            e["loss"] == g["loss"] if rtol == 0.0 else abs(e["loss"] - g["loss"]) <= rtol * abs(e["loss"]))

    lines = [f"step {e['step']}: expected {e['task']} {e['loss']!r}, got {g['task']} {g['loss']!r}"
             for e, g in zip(expected, got) if not same(e, g)]
    if len(expected) != len(got):
        lines.append(f"expected {len(expected)} steps, got {len(got)}")
    return lines


def golden_rtol(golden: dict) -> float:
    """0 (exact) on the CPU and torch version the file was made with, else :data:`CROSS_CPU_RTOL`."""
    return 0.0 if golden.get("cpu") == cpu_fingerprint() else CROSS_CPU_RTOL


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--update", action="store_true", help=f"rewrite {GOLDEN.relative_to(REPO_ROOT)}")
    p.add_argument("--keep", type=Path, default=None, help="build and train in this (new) folder and keep it")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        got = compute(args.keep or Path(tmp))
    if args.update:
        from utils.atomic import atomic_write_json

        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json({"what": __doc__.split("\n")[0], "regenerate": "python scripts/golden_losses.py --update",
                           "torch": torch.__version__, "machine": platform.machine(), "cpu": cpu_fingerprint(),
                           "steps": got}, GOLDEN)
        print(f"wrote {len(got)} steps to {GOLDEN}")
        return 0
    golden = json.loads(GOLDEN.read_text(encoding="utf-8")) if GOLDEN.is_file() else {"steps": []}
    rtol = golden_rtol(golden)
    diff = differences(golden["steps"], got, rtol)
    how = "exactly" if rtol == 0.0 else f"within {rtol:g} relative (file made on another CPU: {golden.get('cpu')})"
    print("\n".join(diff) if diff else f"all {len(got)} steps equal {GOLDEN} {how}")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
