#!/usr/bin/env python
"""GPU check: base-size UC2 pretraining steps in fp16 and bf16, a resume, retrieval scoring; JSON figures.

    python scripts/gpu_check.py [--steps 30] [--out FILE.json] [--peak_tflops X]   # one CUDA GPU, < 5 min
    python scripts/gpu_check.py --device cpu --tiny                                # dry run of the same code

On a CUDA device it builds the benchmark's generated corpus (scripts/benchmark.py, base shape: XLM-R base
encoder, 2048-d regions) and trains the real :class:`training.trainer.Trainer` on the MLM, ITM, MRTM and VTLM
tasks with fused AdamW and SDPA attention under

* fp16: autocast + GradScaler; the run stops at half way and a new Trainer resumes it from the checkpoint;
* bf16: autocast, no scaler.

and then scores a synthetic retrieval set with :func:`evaluation.itm_eval.measure_scoring`. It prints one JSON
object: per precision the step time (median after warm-up), real tokens/s, model FLOP/s and MFU against
the GPU's published dense fp16/bf16 tensor peak (``--peak_tflops`` for a GPU not in the table), max CUDA
memory; which SDPA backends ran (flash attention takes no attention mask, so masked batches use the
memory-efficient or cuDNN kernel; the check records whether flash alone accepts one batch); the resume;
retrieval pairs/s. Model FLOPs per step = 6 x (non-embedding parameters) x tokens + 12 x layers x hidden x
sum of squared sequence lengths (attention), over real (unpadded) tokens. Without CUDA and without
``--device cpu`` it exits with status 2 and a one-line error.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TASKS = ("mlm", "itm", "mrtm", "vtlm")
# Published dense (no sparsity) fp16/bf16 tensor-core peaks, TFLOP/s, by a substring of the device name.
DENSE_PEAK_TFLOPS = (("H200", 989.4), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.4),
                     ("A100", 312.0), ("L40S", 362.1), ("V100", 125.0))


class StopAt(Exception):
    """Raised by a callback to cut a run at a step (after its checkpoint), to resume it."""


def load_benchmark():
    """scripts/benchmark.py as a module (its corpus writer, shapes and task builder); the repository's
    packages and scripts/ become importable from any cwd."""
    for path in (str(REPO_ROOT), str(REPO_ROOT / "scripts")):
        if path not in sys.path:
            sys.path.insert(0, path)
    return importlib.import_module("benchmark")


def dense_peak(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """(peak TFLOP/s, device name) for MFU; None when the GPU is unknown and no override is given."""
    if device.type != "cuda":
        return override, "cpu"
    name = torch.cuda.get_device_name(device)
    if override:
        return override, name
    return next((peak for key, peak in DENSE_PEAK_TFLOPS if key in name), None), name


def model_flops(model, tokens: int, sq_lens: int) -> float:
    """Training FLOPs of one step: 6 x non-embedding params x tokens + 12 x L x H x sum(len^2)."""
    cfg = model.config
    emb = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n or "word_emb" in n)
    dense = sum(p.numel() for p in model.parameters()) - emb
    return 6.0 * dense * tokens + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * sq_lens


class StepMeter:
    """Trainer callback + compute_loss wrapper: per-step wall time (synchronised) and real tokens."""

    def __init__(self, device: torch.device):
        self.device, self.times, self.tokens, self.sq_lens = device, [], [], []
        self._tokens = self._sq = 0
        self._last = None

    def wrap(self, task) -> None:
        inner = task.compute_loss

        def compute_loss(model, batch):
            lens = batch["attn_masks"].sum(1)
            self._tokens += int(lens.sum())
            self._sq += int((lens * lens).sum())
            return inner(model, batch)
        task.compute_loss = compute_loss

    def __call__(self, trainer) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
            self.tokens.append(self._tokens)
            self.sq_lens.append(self._sq)
        self._last, self._tokens, self._sq = now, 0, 0


def build_run(bench, shape, paths, precision: str, out: Path, steps: int, device: torch.device, resume: str,
              workers: int):
    """A Trainer over the benchmark corpus' tasks (fresh model, seed 0)."""
    from model.model import UC2ForPretraining
    from training.run_config import PretrainConfig
    from training.trainer import Trainer

    cfg = PretrainConfig(output_dir=str(out), precision=precision, num_train_steps=steps, warmup_steps=2,
                         learning_rate=1e-4, save_steps=steps // 2, valid_steps=0, log_steps=steps,
                         n_workers=workers, pin_mem=True, resume=resume, seed=0)
    torch.manual_seed(0)
    model = UC2ForPretraining(bench.model_config(shape))
    tasks = [bench.build_task(name, shape, paths, device, workers=workers) for name in TASKS]
    return Trainer(model, tasks, cfg, device=device), tasks


def train_precision(bench, shape, paths, precision: str, root: Path, steps: int, device, resume_check: bool,
                    workers: int):
    """Train ``steps`` steps in ``precision``; with ``resume_check`` stop at half way and resume."""
    meter = StepMeter(device)
    out = root / precision
    if resume_check:
        def stop(trainer):
            if trainer.step == steps // 2:
                raise StopAt(trainer.step)
        first, _ = build_run(bench, shape, paths, precision, out, steps, device, "none", workers)
        first.callbacks.append(stop)
        try:
            first.train()
        except StopAt:
            pass
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer, tasks = build_run(bench, shape, paths, precision, out, steps, device,
                               "auto" if resume_check else "none", workers)
    for task in tasks:
        meter.wrap(task)
    trainer.callbacks.append(meter)
    start_step = None

    def first_step(t):
        nonlocal start_step
        start_step = t.step - 1 if start_step is None else start_step
    trainer.callbacks.insert(0, first_step)
    trainer.train()
    return trainer, meter, start_step


def summarize(trainer, meter: StepMeter, peak: float | None, device, warmup: int = 3) -> dict[str, Any]:
    """Median step time after ``warmup`` steps, tokens/s, FLOP/s, MFU, max memory."""
    times, tokens, sq = meter.times[warmup:] or meter.times, meter.tokens[warmup:] or meter.tokens, \
        meter.sq_lens[warmup:] or meter.sq_lens
    total_s = sum(times)
    flops = sum(model_flops(trainer.model, t, s) for t, s in zip(tokens, sq))
    out = {"steps_timed": len(times), "step_s_median": sorted(times)[len(times) // 2],
           "tokens_per_s": sum(tokens) / total_s, "model_tflops_per_s": flops / total_s / 1e12,
           "mfu": flops / total_s / (peak * 1e12) if peak else None,
           "max_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
           "grad_scaler": trainer.scaler is not None, "optimizer": _optimizer_impl(trainer.optimizer)}
    return out


def _optimizer_impl(optimizer) -> str:
    group = optimizer.param_groups[0]
    return "fused" if group.get("fused") else "foreach" if group.get("foreach") else "for-loop"


def flash_probe(bench, shape, paths, device) -> dict[str, Any]:
    """Does one masked training batch run with the flash kernel alone? Which kernels run by default?"""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from model.model import UC2ForPretraining

    if device.type != "cuda":
        return {"flash_only": "not run (CPU)"}
    model = UC2ForPretraining(bench.model_config(shape)).to(device)
    task = bench.build_task("mlm", shape, paths, device, workers=0)
    batch = next(iter(task.train_batches(0)))
    result = {}
    for label, backends in (("flash_only", [SDPBackend.FLASH_ATTENTION]),
                            ("efficient_only", [SDPBackend.EFFICIENT_ATTENTION]),
                            ("cudnn_only", [SDPBackend.CUDNN_ATTENTION])):
        try:
            with sdpa_kernel(backends), torch.autocast("cuda", dtype=torch.bfloat16):
                task.compute_loss(model, batch)[0].backward()
            result[label] = "ran"
        except RuntimeError as exc:
            result[label] = f"refused: {str(exc).splitlines()[0][:160]}"
    return result


def retrieval_scoring(bench, shape, model, precision: str) -> dict[str, Any]:
    from evaluation.itm_eval import ScoreSettings, measure_scoring, synthetic_set

    n_txt, n_img = (64, 128) if shape.layers >= 12 else (4, 6)
    dataset = synthetic_set(n_txt, n_img, shape.txt_tokens + 2, shape.regions, shape.img_dim, vocab_size=shape.vocab)
    model.eval()
    result = measure_scoring(model, dataset, ScoreSettings(head="itm", precision=precision))
    return {**result, "pairs": n_txt * n_img, "precision": precision}


def run(args: argparse.Namespace) -> dict[str, Any]:
    bench = load_benchmark()
    device = torch.device(args.device)
    shape = bench.SHAPES["tiny" if args.tiny else "base"]
    if not args.tiny:  # ~6 k real tokens per micro-batch, as a GPU batch of the released recipe
        shape = dataclasses.replace(shape, batch=64, n_images=256)
    peak, name = dense_peak(device, args.peak_tflops)
    report: dict[str, Any] = {"device": name, "torch": torch.__version__, "shape": "tiny" if args.tiny else "base",
                              "dense_peak_tflops": peak, "steps": args.steps, "workers": args.workers}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="uc2-gpucheck-") as tmp:
        paths = bench.write_bench_data(Path(tmp) / "data", shape)
        report["sdpa"] = flash_probe(bench, shape, paths, device)
        for precision, resume_check in (("fp16", True), ("bf16", False)):
            trainer, meter, start_step = train_precision(bench, shape, paths, precision, Path(tmp), args.steps, device,
                                                         resume_check, args.workers)
            report[precision] = summarize(trainer, meter, peak, device)
            if resume_check:
                report["resume"] = {"resumed_from_step": start_step, "finished_step": trainer.step,
                                    "ok": start_step == args.steps // 2 and trainer.step == args.steps}
        report["retrieval"] = retrieval_scoring(bench, shape, trainer.model, "bf16" if device.type == "cuda" else "fp32")
    report["wall_s"] = time.perf_counter() - start
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny model and corpus (the CPU dry run)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per precision (even, >= 8)")
    parser.add_argument("--workers", type=int, default=2, help="data-loader workers per task")
    parser.add_argument("--peak_tflops", type=float, default=None, help="dense fp16/bf16 peak for MFU")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.steps < 8 or args.steps % 2:
        parser.error(f"--steps: expected an even number >= 8, got {args.steps}")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device available (torch.cuda.is_available() is False); "
              "run on a GPU machine, or use --device cpu --tiny for a dry run", file=sys.stderr)
        raise SystemExit(2)
    if args.device == "cpu" and not args.tiny:
        parser.error("--device cpu: only the --tiny dry run (a base model on CPU takes far longer than 5 min)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = run(args)
    text = json.dumps(report, indent=1, sort_keys=True)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    if report.get("resume", {}).get("ok") is False:
        print("gpu_check: the resume did not continue from the half-way checkpoint", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
