#!/usr/bin/env python
"""Speed and memory benchmark of UC2 training and evaluation (one run, one JSON file).

    python scripts/benchmark.py [--shape base|tiny] [--steps N] [--out FILE.json] [--sections train,decoding]
        [--tasks mlm,itm,mrtm,vtlm] [--device cpu|cuda] [--precision fp32|bf16|fp16] [--workers N]
    python scripts/benchmark.py --scale [--captions 20000000] [--world 8] [--workers 4] [--out FILE.json]
    python scripts/benchmark.py --mode shortlist [--shape tiny|base] [--gallery 1000,5000] [--k_img K --k_txt K]

What it measures, all in the same process so that the ratios are comparable on a shared machine:

* ``matmul_peak``: the best fp32 FLOP/s of a few large square matmuls, sampled at the start and at the
  start of every timing round (the peak is the best sample; ``local_peak`` the best one of the rounds);
* per pretraining task: examples/s, tokens/s (real, unpadded positions), step time, FLOP/s and its
  fraction of the peak. A *step* is forward + backward (the loss of the task's own ``compute_loss``); the
  AdamW step is timed apart (``optimizer_step_s``) for every model alike, because its cost does not
  depend on the batch;
* the same for a plain Hugging Face ``XLMRobertaForMaskedLM`` (random weights) on a text-only batch of the
  same size and length (``txt_tokens + regions`` positions, 15 % of them labelled);
* data loading: seconds per batch of the task's own DataLoader reading a real txt_db/img_db written in a
  temporary folder by the project's writers, against the step time;
* evaluation: caption-image pairs/s of ``evaluation.itm_eval.score_matrix`` and its fraction of the peak;
* decoding (``--sections decoding``): sentences/s of greedy and beam-8 search of a random MMT
  encoder-decoder (:class:`DecodeShape`), with the key/value caches and recomputing the prefix every step,
  their ratio (goal: cache >= 5x) and whether both gave the same output; fp32 like the rest;
* fast retrieval (``--mode shortlist``): exhaustive cross-encoder scoring vs the itc shortlist + rerank
  (evaluation/shortlist.py) timed end to end on a tiny-shape gallery (``--gallery``), and at any shape the
  measured cost of one pair, one caption and one image embedding, with the projected time of both modes on
  MSCOCO 5K (25,000 x 5,000) and a Multi30K test language (1,000 x 1,000);
* memory: peak RSS after every phase, CUDA max allocated per phase, and the RSS and time of importing
  ``tasks.build`` and ``model.model`` in a fresh interpreter.

FLOPs are measured, not guessed: ``torch.utils.flop_counter.FlopCounterMode`` counts the matmuls of one
(untimed, warm-up) run of exactly the computation then timed; the CPU flash-attention kernels it does not
know are counted with PyTorch's own SDPA formulas. Timings are the best of ``--steps`` runs (the median is
reported too). The timed runs are interleaved: every round times one step of each task, one of the
reference and one evaluation run, so that on a shared machine every phase sees the same mix of quiet and
busy moments and the ratios between them hold; compare ratios within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TASKS = ("mlm", "itm", "mrtm", "vtlm")
#: measured only when listed in --tasks: the ITC shortlist objective (its cost in a pretraining mix)
OPTIONAL_TASKS = ("itc",)
PAD_ID, CLS_ID, SEP_ID = 1, 0, 2
FIRST_TOKEN = 5  # ids below are specials / <unk>


@dataclass(frozen=True)
class BenchShape:
    """Model and batch shape of one benchmark setting.

    ``txt_tokens`` counts the caption tokens with ``<s>``/``</s>`` excluded, so one packed example is
    ``txt_tokens + 2 + regions`` positions long.
    """

    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    img_dim: int
    label_dim: int
    txt_tokens: int = 60
    regions: int = 36
    batch: int = 16
    n_images: int = 32
    """Images in the generated img_db (two captions each in every txt_db)."""
    eval_captions: int = 4
    eval_images: int = 8
    matmul_sizes: tuple[int, ...] = (2048, 3072, 4096)


SHAPES = {
    "base": BenchShape(layers=12, hidden=768, heads=12, ffn=3072, vocab=250002, img_dim=2048, label_dim=1601),
    "tiny": BenchShape(layers=2, hidden=64, heads=4, ffn=128, vocab=1000, img_dim=64, label_dim=33,
                       txt_tokens=12, regions=6, batch=4, n_images=8, eval_captions=2, eval_images=4,
                       matmul_sizes=(256, 512)),
}


@dataclass(frozen=True)
class DecodeShape:
    """Encoder-decoder and batches of the decoding benchmark (MMT: text + regions in the encoder).

    "base" is the MMT facts sheet's model size (d 512, 6 + 6 layers, 8 heads, FFN 2048, the VTLM vocabulary
    of 49,209) built from the UC2 layer classes, on Multi30K-like sources (14 words + 2 specials, 36
    regions). The random model never picks EOS, so every hypothesis runs to its max length
    int(1.5 * 16 + 10) = 34: a fixed, known amount of work.
    """

    model: BenchShape
    """Encoder (and decoder) shape; its batch fields are not used."""
    src_tokens: int = 14
    regions: int = 36
    greedy_batch: int = 16
    beam_batch: int = 4
    beam: int = 8


DECODE_SHAPES = {
    "base": DecodeShape(BenchShape(layers=6, hidden=512, heads=8, ffn=2048, vocab=49209, img_dim=2048, label_dim=601)),
    "tiny": DecodeShape(SHAPES["tiny"], src_tokens=4, regions=6, greedy_batch=3, beam_batch=2, beam=3),
}
SECTIONS = ("train", "decoding")


# ------------------------------------------------------------------------------------------------------
# Timing, FLOP counting, memory


def log(message: str) -> None:
    """Progress line on stderr (a base-shape run takes minutes)."""
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fn: Callable[[], Any], runs: int, device: torch.device) -> list[float]:
    """Wall seconds of ``runs`` calls of ``fn`` (each synchronised)."""
    times = []
    for _ in range(runs):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def matmul_peak(sizes: tuple[int, ...], device: torch.device, repeats: int = 3) -> dict[str, float]:
    """Best fp32 FLOP/s over square matmuls of ``sizes`` (n x n @ n x n = 2 n^3 FLOPs)."""
    best = {"flops_per_s": 0.0, "size": 0}
    gen = torch.Generator(device=device).manual_seed(0)
    for n in sizes:
        a = torch.randn(n, n, device=device, generator=gen)
        b = torch.randn(n, n, device=device, generator=gen)
        a @ b  # warm-up: thread pool, allocator
        rate = 2.0 * n ** 3 / min(time_runs(lambda: a @ b, repeats, device))
        if rate > best["flops_per_s"]:
            best = {"flops_per_s": rate, "size": n}
    return best


def _flop_mapping() -> dict:
    """FLOP formulas for the CPU flash-attention ops that FlopCounterMode does not register.

    Uses PyTorch's own SDPA formulas (4 * B * heads * Lq * Lk * d forward), as it does for the CUDA kernels.
    """
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    # FlopCounterMode hands custom formulas the shapes of tensor arguments, not the tensors.
    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)

    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = forward
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = backward
    return mapping


def count_flops(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn`` once under FlopCounterMode: (its result, FLOPs of forward and backward matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as counter:
        result = fn()
    return result, int(counter.get_total_flops())


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cuda_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None


# ------------------------------------------------------------------------------------------------------
# A small real corpus, written with the project's own writers


def _image_arrays(shape: BenchShape, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One image's detector output: ``regions`` boxes, all above the 0.2 confidence rule."""
    n = shape.regions
    xy = rng.uniform(0.0, 0.5, size=(n, 2))
    wh = rng.uniform(0.1, 0.5, size=(n, 2))
    soft = rng.dirichlet(np.ones(shape.label_dim), size=n)
    return {"features": rng.normal(size=(n, shape.img_dim)).astype(np.float32),
            "norm_bb": np.concatenate([xy, xy + wh, wh], axis=1).astype(np.float32),
            "conf": np.sort(rng.uniform(0.3, 1.0, size=(n, 1)), axis=0)[::-1].astype(np.float32),
            "soft_labels": soft.astype(np.float32)}


def _paired_fields(shape: BenchShape, rng: np.random.Generator) -> dict[str, Any]:
    """A VTLM example whose ``<s> EN </s> <s> X </s>`` input has ``txt_tokens + 2`` positions.

    One word per token on each side, English word w aligned to word w of the other language.
    """
    side = (shape.txt_tokens - 2) // 2
    ids1, ids2 = (rng.integers(FIRST_TOKEN, shape.vocab - 1, size=side).tolist() for _ in range(2))
    return {"input_ids": ids1 + [SEP_ID, CLS_ID] + ids2, "input_ids_lang1": ids1, "input_ids_lang2": ids2,
            "word2ids_lang1": [[i] for i in range(side)], "word2ids_lang2": [[i] for i in range(side)],
            "lang1_lang2_walign": {i: [i] for i in range(side)}}


def write_bench_data(root: Path, shape: BenchShape, seed: int = 0) -> dict[str, Path]:
    """Write ``root/img`` (img_db), ``root/txt_en.db`` (captions) and ``root/txt_en_de.db`` (paired).

    Every caption has ``shape.txt_tokens`` ids and every image ``shape.regions`` boxes, so the token
    bucket sampler forms batches of exactly ``shape.batch`` examples.
    """
    from data.img_db import ImgDbWriter
    from data.txt_db import TxtDbWriter

    rng = np.random.default_rng(seed)
    names = [f"bench_{j:06d}.npz" for j in range(shape.n_images)]
    with ImgDbWriter(root / "img") as writer:
        for name in names:
            writer.add(name, _image_arrays(shape, rng))
    meta = {"CLS": CLS_ID, "SEP": SEP_ID, "MASK": shape.vocab - 1, "v_range": [FIRST_TOKEN, shape.vocab - 1],
            "lang": "en"}
    with TxtDbWriter(root / "txt_en.db", meta) as writer:
        for k in range(2 * shape.n_images):
            ids = rng.integers(FIRST_TOKEN, shape.vocab - 1, size=shape.txt_tokens).tolist()
            writer.add(str(k), {"input_ids": ids, "img_fname": names[k // 2]})
    with TxtDbWriter(root / "txt_en_de.db", meta) as writer:
        for k in range(2 * shape.n_images):
            writer.add(str(k), {**_paired_fields(shape, rng), "img_fname": names[k // 2]})
    return {"img": root / "img", "txt": root / "txt_en.db", "paired": root / "txt_en_de.db"}


def label_vocab(shape: BenchShape, seed: int = 0):
    """MRTM class words: each detector class an English word of 1-2 random sub-tokens."""
    from data.labels import LabelVocab

    rng = np.random.default_rng(seed)
    table = rng.integers(FIRST_TOKEN, shape.vocab - 1, size=(shape.label_dim, 2)).astype(np.int64)
    lengths = rng.integers(1, 3, size=shape.label_dim).astype(np.int64)
    table[lengths == 1, 1] = -1
    return LabelVocab({"en": table}, {"en": lengths})


def build_task(name: str, shape: BenchShape, paths: dict[str, Path], device: torch.device, workers: int):
    """The task's PretrainTask (objective, dataset, token-bucket sampler, loader) on the bench corpus."""
    from data.img_db import ImgDb
    from data.sampler import TokenBucketSampler
    from tasks.base import ExampleSource, LoaderOptions, PretrainTask, TaskDataset
    from tasks.registry import task_spec
    from data.txt_db import TxtDb

    txt = paths["paired" if name == "vtlm" else "txt"]
    source = ExampleSource([(TxtDb(txt), ImgDb(paths["img"]))])
    spec = task_spec(name)
    resources = (label_vocab(shape),) if spec.name == "mrtm" else ()  # MRTM's class-word table
    objective = spec.target(spec.config(task=spec.name), *resources)
    sampler = TokenBucketSampler(source.lens, int(shape.batch * source.lens.max()), seed=0)
    return PretrainTask(name, 1.0, objective, TaskDataset(source, objective), sampler,
                        options=LoaderOptions(num_workers=workers, device=device))


# ------------------------------------------------------------------------------------------------------
# Phases


class PeakSampler:
    """Samples the matmul peak during the run; ``best`` is the peak reported, ``last`` the nearest sample."""

    def __init__(self, sizes: tuple[int, ...], device: torch.device):
        self.sizes, self.device = sizes, device
        self.samples: list[dict[str, float]] = []

    def sample(self) -> float:
        self.samples.append(matmul_peak(self.sizes, self.device))
        return self.last

    @property
    def last(self) -> float:
        return self.samples[-1]["flops_per_s"]

    @property
    def best(self) -> float:
        return max(s["flops_per_s"] for s in self.samples)


def model_config(shape: BenchShape):
    """UC2 model config of ``shape`` (XLM-R base defaults otherwise)."""
    from model.config import UC2ModelConfig

    return UC2ModelConfig.xlmr_base(vocab_size=shape.vocab, hidden_size=shape.hidden,
                                    num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                                    intermediate_size=shape.ffn, img_dim=shape.img_dim,
                                    img_label_dim=shape.label_dim)


def train_step_fn(model, loss_fn: Callable[[], torch.Tensor], precision: str, device: torch.device):
    """One training step without the optimizer: fresh gradients, forward under autocast, backward."""
    from utils.device import autocast

    def step() -> float:
        model.zero_grad(set_to_none=True)
        with autocast(precision, device.type):
            loss = loss_fn()
        loss.backward()
        return float(loss.detach())
    return step


@dataclass
class Phase:
    """One timed computation: a training step of a task or of the reference, or an evaluation run."""

    name: str
    run: Callable[[], Any]
    examples: int
    tokens: int
    release: Callable[[], None] = lambda: None
    """Called after every run, untimed (frees gradients so that several models fit side by side)."""
    flops: int = 0
    times: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def count_phase(phase: Phase, device: torch.device) -> None:
    """The warm-up run of ``phase``, under FlopCounterMode; records FLOPs, loss and memory."""
    cuda_reset(device)
    result, phase.flops = count_flops(phase.run)
    phase.release()
    finite = np.isfinite(result).all() if isinstance(result, np.ndarray) else np.isfinite(result)
    if not finite:
        raise RuntimeError(f"benchmark phase {phase.name}: non-finite result on the warm-up run")
    if not isinstance(result, np.ndarray):
        phase.info["loss"] = result
    phase.info.update(peak_rss_mb=peak_rss_mb(), cuda_max_allocated_mb=cuda_peak_mb(device))


def time_round_robin(phases: list[Phase], steps: int, device: torch.device, peaks: PeakSampler) -> None:
    """``steps`` rounds, each a matmul-peak sample then one timed run of every phase.

    Interleaving gives every phase the same share of a busy machine's quiet and loud moments, so the
    ratios between phases (UC2 vs the reference, evaluation vs training) mean something.
    """
    for phase in phases:
        log(f"warm-up and FLOP count: {phase.name}")
        count_phase(phase, device)
    first = len(peaks.samples)
    for round_ in range(steps):
        peaks.sample()
        log(f"round {round_ + 1}/{steps}: {', '.join(p.name for p in phases)}")
        for phase in phases:
            phase.times += time_runs(phase.run, 1, device)
            phase.release()
    local = max(s["flops_per_s"] for s in peaks.samples[first:])
    for phase in phases:
        phase.info["local_peak"] = local


def phase_report(phase: Phase) -> dict[str, Any]:
    """Throughputs from the best time (the median is kept to show the noise)."""
    best = min(phase.times)
    return {"step_s": best, "step_s_median": statistics.median(phase.times),
            "examples_per_s": phase.examples / best, "tokens_per_s": phase.tokens / best,
            "flops_per_step": phase.flops, "flops_per_s": phase.flops / best, **phase.info}


def measure_loading(task, load_batches: int) -> tuple[dict, dict[str, Any]]:
    """Draw batches from the task's own DataLoader: (the first batch, seconds per batch after it)."""
    import tracemalloc

    batches = task.train_batches(0)
    try:
        start = time.perf_counter()
        first = next(batches)
        first_s = time.perf_counter() - start
        times = []
        for _ in range(load_batches):
            start = time.perf_counter()
            next(batches)
            times.append(time.perf_counter() - start)
    finally:
        batches.close()  # stops loader workers
    # Python-side allocation peak of building one example: catches per-example tables (the original's
    # label matrix, or a 250k-id list per token) that the time alone may hide.
    tracemalloc.start()
    task.train_data[(0, 1234)]
    example_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return first, {"first_batch_s": first_s, "load_s_per_batch": statistics.median(times),
                   "batches_per_s": 1.0 / statistics.median(times), "example_peak_alloc_kb": example_peak / 1024}


def uc2_phases(model, shape: BenchShape, names: list[str], paths: dict[str, Path], args,
               device: torch.device) -> list[Phase]:
    """Per task: its loader measured on the bench corpus, and a Phase stepping its first batch."""
    phases = []
    for name in names:
        log(f"task {name}: data loading")
        task = build_task(name, shape, paths, device, args.workers)
        batch, loading = measure_loading(task, args.load_batches)
        step = train_step_fn(model, lambda t=task, b=batch: t.compute_loss(model, b)[0], args.precision, device)
        phase = Phase(name, step, int(batch["input_ids"].size(0)), int(batch["attn_masks"].sum()),
                      release=lambda: model.zero_grad(set_to_none=True))
        phase.info.update(batch=phase.examples, seq_len=int(batch["attn_masks"].size(1)), data=loading)
        phases.append(phase)
    return phases


def _adamw_impl(device: torch.device) -> dict[str, bool]:
    """The implementation optim.adamw.build_optimizer picks: fused on CUDA, foreach otherwise."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


def time_optimizer(model, optimizer, device: torch.device, steps: int) -> dict[str, float]:
    """Seconds of one AdamW step over every parameter (gradients filled with ones; one warm-up step).

    The moment buffers are dropped afterwards, so the next model has the memory.
    """
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()  # creates the moment buffers
    best = min(time_runs(optimizer.step, max(1, steps), device))
    n_params = sum(p.numel() for p in model.parameters())
    optimizer.state.clear()
    model.zero_grad(set_to_none=True)
    return {"optimizer_step_s": best, "parameters": n_params}


def hf_masked_lm(shape: BenchShape):
    """A randomly initialised Hugging Face XLMRobertaForMaskedLM of the same width, depth and vocabulary
    (SDPA attention, tied decoder), built from a config: nothing is downloaded."""
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    config = XLMRobertaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                              num_attention_heads=shape.heads, intermediate_size=shape.ffn,
                              max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                              pad_token_id=PAD_ID, bos_token_id=CLS_ID, eos_token_id=SEP_ID,
                              attn_implementation="sdpa")
    return XLMRobertaForMaskedLM(config)


def hf_batch(shape: BenchShape, device: torch.device, mask_prob: float = 0.15, seed: int = 0) -> dict:
    """Text-only batch (B, txt_tokens + regions): ``<s> ids </s>``, ``mask_prob`` of the ids labelled."""
    gen = torch.Generator().manual_seed(seed)
    length = shape.txt_tokens + shape.regions
    ids = torch.randint(FIRST_TOKEN, shape.vocab - 1, (shape.batch, length), generator=gen)
    ids[:, 0], ids[:, -1] = CLS_ID, SEP_ID
    chosen = torch.rand(shape.batch, length, generator=gen) < mask_prob
    chosen[:, 0] = chosen[:, -1] = False
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}


def hf_phase(model, shape: BenchShape, args, device: torch.device) -> Phase:
    """Forward + backward of HF XLM-R MaskedLM (loss over the labelled 15 %)."""
    batch = hf_batch(shape, device)
    step = train_step_fn(model, lambda: model(**batch).loss, args.precision, device)
    phase = Phase("hf_xlmr_mlm", step, shape.batch, int(batch["attention_mask"].sum()),
                  release=lambda: model.zero_grad(set_to_none=True))
    phase.info.update(batch=shape.batch, seq_len=int(batch["input_ids"].size(1)))
    return phase


def eval_phase(model, shape: BenchShape, args) -> Phase:
    """evaluation.itm_eval.score_matrix (cross-encoder scoring, default blocks) on a synthetic set at ``shape``."""
    from evaluation.itm_eval import ScoreSettings, encoder_flops_per_pair, score_matrix, synthetic_set

    dataset = synthetic_set(shape.eval_captions, shape.eval_images, shape.txt_tokens + 2, shape.regions,
                            shape.img_dim, vocab_size=shape.vocab)
    settings = ScoreSettings(head="rank", precision=args.precision)
    pairs = shape.eval_captions * shape.eval_images
    phase = Phase("evaluation", lambda: score_matrix(model, dataset, settings), pairs,
                  pairs * (shape.txt_tokens + 2 + shape.regions))
    phase.info.update(pairs=pairs, txt_block=settings.txt_block, img_block=settings.img_block,
                      flops_analytic=pairs * encoder_flops_per_pair(model.config, shape.txt_tokens + 2,
                                                                    shape.regions))
    return phase


def bench_models(shape: BenchShape, paths: dict[str, Path], args, device: torch.device,
                 peaks: PeakSampler) -> dict[str, Any]:
    """Build the three models, time all phases round-robin, then each model's AdamW step."""
    from model.model import UC2ForImageTextRetrieval, UC2ForPretraining
    from optim.adamw import param_groups

    torch.manual_seed(0)
    extra = {}
    if "itc" in args.task_list:  # the shortlist head, as a pretraining run that lists the itc task builds it
        from model.itc import itc_head
        extra["itc"] = itc_head
    uc2 = UC2ForPretraining(model_config(shape), extra_heads=extra).to(device).train()
    hf = hf_masked_lm(shape).to(device).train()
    # No parameter needs a gradient in evaluation.
    scorer = UC2ForImageTextRetrieval(model_config(shape)).to(device).eval().requires_grad_(False)
    tasks = uc2_phases(uc2, shape, args.task_list, paths, args, device)
    phases = [*tasks, hf_phase(hf, shape, args, device), eval_phase(scorer, shape, args)]
    time_round_robin(phases, args.steps, device, peaks)
    reports = {p.name: phase_report(p) for p in phases}
    for name in args.task_list:
        data = reports[name]["data"]
        data["fraction_of_step"] = data["load_s_per_batch"] / reports[name]["step_s"]
    log("AdamW steps")
    hf_report = reports.pop("hf_xlmr_mlm")
    hf_report.update(time_optimizer(hf, torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.01,
                                                          **_adamw_impl(device)), device, args.steps))
    optimizer = torch.optim.AdamW(param_groups(uc2, 1e-4, 0.01), lr=1e-4, **_adamw_impl(device))
    evaluation = reports.pop("evaluation")
    evaluation.update(pairs_per_s=evaluation.pop("examples_per_s"), eval_s=evaluation.pop("step_s"),
                      eval_s_median=evaluation.pop("step_s_median"), flops=evaluation.pop("flops_per_step"))
    return {"tasks": reports, "hf_reference": hf_report, "evaluation": evaluation,
            "optimizer": time_optimizer(uc2, optimizer, device, args.steps)}


# ------------------------------------------------------------------------------------------------------
# Fast retrieval (--mode shortlist)

#: test sets whose scoring time is projected at base shape: (name, captions, images)
PROJECTED_SETS = (("MSCOCO 5K", 25_000, 5_000), ("Multi30K (one language)", 1_000, 1_000))


def shortlist_model(shape: BenchShape, device: torch.device):
    """A random retrieval model with the ``itc`` shortlist head (timing only: its rankings mean nothing)."""
    from model.itc import itc_head
    from model.model import UC2ForImageTextRetrieval

    torch.manual_seed(0)
    return UC2ForImageTextRetrieval(model_config(shape), extra_heads={"itc": itc_head}).to(device).eval() \
        .requires_grad_(False)


def unit_costs(model, shape: BenchShape, args, device: torch.device) -> dict[str, float]:
    """Measured seconds per cross-encoder pair (``score_matrix`` on ``--probe_pairs`` captions x images) and
    per caption / image embedding (the itc head's single-modality passes), best of ``--steps`` runs."""
    from evaluation.itm_eval import ScoreSettings, score_matrix, synthetic_set
    from evaluation.shortlist import embed_set

    n_txt, n_img = args.probe
    probe = synthetic_set(n_txt, n_img, shape.txt_tokens + 2, shape.regions, shape.img_dim, vocab_size=shape.vocab)
    settings = ScoreSettings(head="rank", precision=args.precision)
    pair_s = min(time_runs(lambda: score_matrix(model, probe, settings), args.steps, device)) / (n_txt * n_img)
    emb_txt = synthetic_set(64, 1, shape.txt_tokens + 2, shape.regions, shape.img_dim, vocab_size=shape.vocab)
    emb_img = synthetic_set(1, 64, shape.txt_tokens + 2, shape.regions, shape.img_dim, vocab_size=shape.vocab)
    both = min(time_runs(lambda: embed_set(model, emb_txt), args.steps, device))      # 64 captions + 1 image
    imgs = min(time_runs(lambda: embed_set(model, emb_img), args.steps, device))      # 1 caption + 64 images
    return {"pair_s": pair_s, "txt_embed_s": both / 64, "img_embed_s": imgs / 64, "probe_pairs": n_txt * n_img}


def projected_times(costs: dict[str, float], options) -> list[dict[str, Any]]:
    """Exhaustive vs shortlist + rerank time of :data:`PROJECTED_SETS` from the unit costs, at the k that
    ``options`` (training.itm_config.ShortlistOptions) gives each set's gallery; the pairs reranked are
    bounded by n_txt * k_img + n_img * k_txt (the union of both shortlists; k-NN not counted)."""
    from evaluation.shortlist import gallery_k

    rows = []
    for name, n_txt, n_img in PROJECTED_SETS:
        k_img = gallery_k(options.k_img, n_img, options.k_fraction, options.k_max)
        k_txt = gallery_k(options.k_txt, n_txt, options.k_fraction, options.k_max)
        exhaustive = n_txt * n_img * costs["pair_s"]
        pairs = min(n_txt * k_img + n_img * k_txt, n_txt * n_img)
        fast = n_txt * costs["txt_embed_s"] + n_img * costs["img_embed_s"] + pairs * costs["pair_s"]
        rows.append({"set": name, "captions": n_txt, "images": n_img, "k_img": k_img, "k_txt": k_txt,
                     "exhaustive_s": exhaustive, "pairs_reranked_max": pairs, "shortlist_s": fast,
                     "speedup": exhaustive / fast})
    return rows


def end_to_end(model, shape: BenchShape, args, options, device: torch.device) -> dict[str, Any]:
    """Exhaustive scoring vs shortlist + rerank (``options``: ShortlistOptions), both timed end to end on a
    synthetic gallery."""
    from evaluation.itm_eval import ScoreSettings, score_matrix, synthetic_set
    from evaluation.shortlist import run_shortlist

    n_txt, n_img = args.gallery
    gallery = synthetic_set(n_txt, n_img, shape.txt_tokens + 2, shape.regions, shape.img_dim, vocab_size=shape.vocab)
    settings = ScoreSettings(head="rank", precision=args.precision)
    log(f"shortlist: exhaustive scoring of {n_txt} x {n_img} pairs")
    start = time.perf_counter()
    score_matrix(model, gallery, settings)
    sync(device)
    exhaustive = time.perf_counter() - start
    log("shortlist: embed, k-NN, rerank")
    run = run_shortlist(model, gallery, settings, options)
    pairs = int(run.shortlist.pairs.sum())
    return {"captions": n_txt, "images": n_img, "k_img": run.shortlist.k_img, "k_txt": run.shortlist.k_txt,
            "exhaustive_s": exhaustive, "shortlist_s": run.seconds["total"], "stages_s": run.seconds,
            "pairs_total": n_txt * n_img, "pairs_scored": pairs, "speedup": exhaustive / run.seconds["total"]}


def bench_shortlist(args) -> dict[str, Any]:
    """--mode shortlist: at tiny shape the end-to-end ratio on a ``--gallery`` set; at every shape the unit
    costs and, from them, the projected time of both modes on MSCOCO 5K and Multi30K."""
    from training.itm_config import ShortlistOptions

    torch.set_num_threads(args.threads)
    device, shape = torch.device(args.device), SHAPES[args.shape]
    options = ShortlistOptions(k_img=args.k_img, k_txt=args.k_txt)   # None: the default k from the gallery size
    model = shortlist_model(shape, device)
    report: dict[str, Any] = {"meta": {"shape": args.shape, "device": str(device), "precision": args.precision,
                                       "threads": torch.get_num_threads(), "k_img": args.k_img, "k_txt": args.k_txt}}
    if args.shape == "tiny":
        report["end_to_end"] = end_to_end(model, shape, args, options, device)
    costs = unit_costs(model, shape, args, device)
    report["unit_costs"] = costs
    report["projected"] = projected_times(costs, options)
    return report


def format_shortlist_table(report: dict[str, Any]) -> str:
    lines = []
    e2e = report.get("end_to_end")
    if e2e:
        lines.append(f"end to end ({report['meta']['shape']}, {e2e['captions']} captions x {e2e['images']} images, "
                     f"k_img {e2e['k_img']} / k_txt {e2e['k_txt']}): exhaustive {e2e['exhaustive_s']:.1f} s, "
                     f"shortlist + rerank {e2e['shortlist_s']:.1f} s ({e2e['speedup']:.1f}x faster; "
                     f"{e2e['pairs_scored']:,} of {e2e['pairs_total']:,} pairs)")
    c = report["unit_costs"]
    lines.append(f"unit costs: {c['pair_s'] * 1e3:.3f} ms / pair, {c['txt_embed_s'] * 1e3:.3f} ms / caption, "
                 f"{c['img_embed_s'] * 1e3:.3f} ms / image")
    lines.append("| set | captions x images | k_img / k_txt | exhaustive (projected) | shortlist + rerank (projected) "
                 "| speed-up |")
    lines.append("|---|---|---|---|---|---|")
    for row in report["projected"]:
        lines.append(f"| {row['set']} | {row['captions']:,} x {row['images']:,} | {row['k_img']} / {row['k_txt']} | "
                     f"{row['exhaustive_s'] / 3600:.2f} h | {row['shortlist_s'] / 3600:.3f} h | {row['speedup']:.1f}x |")
    return "\n".join(lines)


def decoding_model(shape: DecodeShape, device: torch.device):
    """Random MMT encoder-decoder (decoder copied from the encoder) and a source batch of equal lengths."""
    from data.collate import collate_backbone, xlmr_position_ids
    from model.model import UC2ForPretraining
    from model.seq2seq import build_from_uc2

    torch.manual_seed(0)
    model = build_from_uc2(UC2ForPretraining(model_config(shape.model)), use_images=True).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    n, vocab, img_dim = shape.src_tokens + 2, shape.model.vocab, shape.model.img_dim
    examples = [{"input_ids": torch.cat([torch.tensor([CLS_ID]), torch.randint(FIRST_TOKEN, vocab, (n - 2,),
                                                                               generator=gen), torch.tensor([SEP_ID])]),
                 "position_ids": xlmr_position_ids(n), "img_feat": torch.randn(shape.regions, img_dim, generator=gen),
                 "img_pos_feat": torch.rand(shape.regions, 7, generator=gen)}
                for _ in range(max(shape.greedy_batch, shape.beam_batch))]
    src = {k: v.to(device) for k, v in collate_backbone(examples).items() if isinstance(v, torch.Tensor)}
    return model, src


def bench_decoding(shape: DecodeShape, device: torch.device, runs: int) -> dict[str, Any]:
    """Sentences/s of greedy and beam search, with and without the key/value caches (best of ``runs``)."""
    from model.generation import SearchConfig, generate
    from model.seq2seq import count_parameters

    model, src = decoding_model(shape, device)
    generate(model, {k: v[:1] for k, v in src.items()}, SearchConfig(beam_size=2))  # warm-up
    out: dict[str, Any] = {"parameters": count_parameters(model), "shape": asdict(shape)}
    for name, beam, batch in (("greedy", 1, shape.greedy_batch), (f"beam{shape.beam}", shape.beam, shape.beam_batch)):
        part = {k: v[:batch] for k, v in src.items()}
        row: dict[str, Any] = {"sentences": batch, "beam": beam}
        tokens = {}
        for key, cache in (("cached", True), ("uncached", False)):
            log(f"decoding {name} {key}")
            config = SearchConfig(beam_size=beam, use_cache=cache)
            runs_out: list[list] = []
            seconds = min(time_runs(lambda: runs_out.append(generate(model, part, config)), runs, device))
            tokens[key] = [h.tokens for h in runs_out[-1]]
            row[f"{key}_s"] = seconds
            row[f"{key}_sentences_per_s"] = batch / seconds
        with torch.no_grad():  # the encoder runs once per batch in both: the decoder's own speed-up without it
            row["encode_s"] = min(time_runs(lambda: model.encode(part), runs, device))
        row["generated_tokens_per_sentence"] = sum(map(len, tokens["cached"])) / batch
        row["cache_speedup"] = row["uncached_s"] / row["cached_s"]
        row["cache_speedup_after_encoding"] = (row["uncached_s"] - row["encode_s"]) / (row["cached_s"] - row["encode_s"])
        row["same_output"] = tokens["cached"] == tokens["uncached"]
        out[name] = row
    out["checks"] = {"cache_speedup_ge_5x": all(out[n]["cache_speedup"] >= 5.0 for n in out if n.startswith(("greedy", "beam"))),
                     "same_output": all(out[n]["same_output"] for n in out if n.startswith(("greedy", "beam")))}
    return out


_IMPORT_PROBE = """
import json, os, resource, sys, time
def rss():  # current resident set, MiB (peak RSS on systems without /proc)
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); r1 = rss()
import tasks.build, model.model
from tasks.registry import discover
discover()
t2 = time.perf_counter()
print(json.dumps({"torch_s": t1 - t0, "torch_rss_mb": r1, "project_s": t2 - t1, "rss_mb": rss(),
                  "project_rss_mb": rss() - r1}))
"""


def import_cost() -> dict[str, Any]:
    """RSS and time of importing tasks.build, model.model and every task module in a fresh
    interpreter, apart from torch's own share."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"import probe failed:\n{proc.stderr[-2000:]}")
    return {"modules": "tasks.build, model.model, tasks.* (registered tasks)",
            **json.loads(proc.stdout.strip().splitlines()[-1])}


# ------------------------------------------------------------------------------------------------------
# Report


def add_fractions(report: dict[str, Any], peak: float) -> None:
    """Fractions of the run's peak (and of the nearest peak sample) for every timed phase."""
    phases = [*report["tasks"].values(), report["hf_reference"], report["evaluation"]]
    for phase in phases:
        phase["fraction_of_peak"] = phase["flops_per_s"] / peak
        phase["fraction_of_local_peak"] = phase["flops_per_s"] / phase["local_peak"]


def add_checks(report: dict[str, Any], min_fraction: float = 0.5, max_data: float = 0.10,
               max_import_mb: float = 200.0) -> None:
    """The issue's requirements as booleans (with the numbers they compare).

    Every task's step must reach ``min_fraction`` of the peak; evaluation is compared with the best task
    (the strictest reading of "at least the training step's fraction").
    """
    tasks = report["tasks"]
    train_min = min(t["fraction_of_peak"] for t in tasks.values())
    train_max = max(t["fraction_of_peak"] for t in tasks.values())
    data_max = max(t["data"]["fraction_of_step"] for t in tasks.values())
    eval_fraction = report["evaluation"]["fraction_of_peak"]
    report["checks"] = {
        "train_fraction_min": train_min, "train_fraction_max": train_max,
        "train_step_reaches_min_fraction": train_min >= min_fraction,
        "min_fraction": min_fraction, "hf_fraction": report["hf_reference"]["fraction_of_peak"],
        "data_fraction_max": data_max, "data_loading_under_max": data_max < max_data, "max_data": max_data,
        "eval_fraction": eval_fraction, "eval_reaches_train_fraction": eval_fraction >= train_max,
        # The same against the matmul sample taken next to each phase (less sensitive to a busy machine).
        "train_local_fraction_min": min(t["fraction_of_local_peak"] for t in tasks.values()),
        "hf_local_fraction": report["hf_reference"]["fraction_of_local_peak"],
        "eval_local_fraction": report["evaluation"]["fraction_of_local_peak"],
        "import_project_rss_mb": report["imports"]["project_rss_mb"],
        "import_small": report["imports"]["project_rss_mb"] < max_import_mb,
    }


def format_table(report: dict[str, Any]) -> str:
    """A readable summary of the JSON report."""
    lines = [format_train_table(report)] if "tasks" in report else []
    if "decoding" in report:
        lines.append(format_decoding_table(report["decoding"]))
    return "\n".join(lines)


def format_decoding_table(decoding: dict[str, Any]) -> str:
    """Decoding rows: sentences/s cached and uncached, the cache's speed-up (overall, and of the search
    after the shared encoder pass)."""
    lines = [f"decoding ({decoding['parameters'] / 1e6:.1f}M parameters)",
             f"{'search':<10}{'sents':>6}{'tok/sent':>9}{'cached/s':>10}{'uncached/s':>11}{'speed-up':>9}"
             f"{'w/o enc':>8}{'same':>6}"]
    for name, r in decoding.items():
        if isinstance(r, dict) and "cache_speedup" in r:
            lines.append(f"{name:<10}{r['sentences']:6d}{r['generated_tokens_per_sentence']:9.1f}"
                         f"{r['cached_sentences_per_s']:10.2f}{r['uncached_sentences_per_s']:11.2f}"
                         f"{r['cache_speedup']:8.1f}x{r['cache_speedup_after_encoding']:7.1f}x"
                         f"{str(r['same_output']):>6}")
    return "\n".join(lines)


def format_train_table(report: dict[str, Any]) -> str:
    """The training/evaluation part of the summary."""
    peak = report["matmul_peak"]["flops_per_s"]
    lines = [f"matmul peak {peak / 1e9:.1f} GFLOP/s ({report['meta']['device']}, {report['meta']['precision']}, "
             f"{report['meta']['threads']} threads)",
             f"{'phase':<14}{'step s':>9}{'ex/s':>9}{'tok/s':>10}{'GFLOP/s':>10}{'peak%':>7}{'local%':>7}"
             f"{'load%':>7}"]
    rows = {**report["tasks"], "hf_xlmr_mlm": report["hf_reference"]}
    for name, r in rows.items():
        load = f"{100 * r['data']['fraction_of_step']:6.1f}%" if "data" in r else "      -"
        lines.append(f"{name:<14}{r['step_s']:9.3f}{r['examples_per_s']:9.2f}{r['tokens_per_s']:10.1f}"
                     f"{r['flops_per_s'] / 1e9:10.1f}{100 * r['fraction_of_peak']:6.1f}%"
                     f"{100 * r['fraction_of_local_peak']:6.1f}%{load}")
    ev = report["evaluation"]
    lines.append(f"{'eval (pairs)':<14}{ev['eval_s']:9.3f}{ev['pairs_per_s']:9.2f}{'':>10}"
                 f"{ev['flops_per_s'] / 1e9:10.1f}{100 * ev['fraction_of_peak']:6.1f}%"
                 f"{100 * ev['fraction_of_local_peak']:6.1f}%")
    imp = report["imports"]
    lines.append(f"imports: +{imp['project_rss_mb']:.1f} MiB RSS, {imp['project_s']:.2f} s over torch; "
                 f"peak RSS {report['memory']['peak_rss_mb']:.0f} MiB")
    lines.append("checks: " + ", ".join(f"{k}={v}" for k, v in report["checks"].items() if isinstance(v, bool)))
    return "\n".join(lines)


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write the report atomically (temp file in the same folder, then rename)."""
    from utils.atomic import atomic_write_json

    atomic_write_json(report, path, indent=1)


# ------------------------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="base")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per phase (best one reported)")
    parser.add_argument("--out", type=Path, default=None, help="JSON report path (default: print only)")
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help=f"comma-separated subset of {','.join(TASKS + OPTIONAL_TASKS)} (default: {','.join(TASKS)})")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: load in-process)")
    parser.add_argument("--load_batches", type=int, default=4, help="batches timed after the first")
    parser.add_argument("--scale", action="store_true", help="run the scale section instead (scripts/bench_scale.py: "
                        "batch plan, dataset pickle and worker memory at --captions / --world; --workers defaults to 4)")
    parser.add_argument("--captions", type=int, default=20_000_000, help="scale section: synthetic captions")
    parser.add_argument("--world", type=int, default=8, help="scale section: ranks the sampler shards over")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="comma-separated subset of train (pretraining steps, evaluation, imports) and "
                             "decoding (greedy / beam sentences/s, cache vs no cache)")
    parser.add_argument("--decode_runs", type=int, default=1, help="timed runs per decoding setting (best)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch intra-op threads (default: all cores; 1 on a machine shared with other work)")
    parser.add_argument("--mode", choices=("default", "shortlist"), default="default",
                        help="shortlist: fast retrieval (exhaustive vs shortlist + rerank: end to end at tiny shape, "
                             "projected from measured unit costs at any shape)")
    parser.add_argument("--gallery", default="1000,5000", help="shortlist mode, tiny shape: captions,images")
    parser.add_argument("--probe", default="8,32", help="shortlist mode: captions,images timed for the per-pair cost")
    parser.add_argument("--k_img", type=int, default=None, help="shortlist mode: images per caption reranked "
                                                                 "(default: from the gallery size, as inf_itm.py)")
    parser.add_argument("--k_txt", type=int, default=None, help="shortlist mode: captions per image reranked "
                                                                 "(default: from the gallery size, as inf_itm.py)")
    args = parser.parse_args(argv)
    try:
        args.gallery, args.probe = (tuple(int(x) for x in v.split(",")) for v in (args.gallery, args.probe))
    except ValueError:
        parser.error(f"--gallery/--probe: expected two integers 'captions,images', got {args.gallery!r} / {args.probe!r}")
    ks = [k for k in (args.k_img, args.k_txt) if k is not None]
    if len(args.gallery) != 2 or len(args.probe) != 2 or min(*args.gallery, *args.probe, *ks) < 1:
        parser.error("--gallery/--probe: expected two positive integers 'captions,images'; --k_img/--k_txt >= 1")
    args.section_list = [x.strip() for x in args.sections.split(",") if x.strip()]
    if not args.section_list or any(x not in SECTIONS for x in args.section_list):
        parser.error(f"--sections: choose from {', '.join(SECTIONS)}, got {args.sections!r}")
    if args.decode_runs < 1 or args.threads < 1:
        parser.error("--decode_runs and --threads must be >= 1")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS + OPTIONAL_TASKS]
    if unknown or not tasks:
        parser.error(f"--tasks: unknown {unknown or 'empty list'}; choose from {', '.join(TASKS + OPTIONAL_TASKS)}")
    if args.steps < 1 or args.load_batches < 1 or args.workers < 0:
        parser.error("--steps and --load_batches must be >= 1, --workers >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    args.task_list = tasks
    return args


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Every phase of the benchmark in this process; returns the JSON-ready report."""
    from utils.misc import git_info

    torch.set_num_threads(args.threads)
    device, shape = torch.device(args.device), SHAPES[args.shape]
    peaks = PeakSampler(shape.matmul_sizes, device)
    report: dict[str, Any] = {"meta": {
        "shape": args.shape, "shape_detail": asdict(shape), "device": str(device), "precision": args.precision,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "steps": args.steps,
        "workers": args.workers, "git": git_info(),
        "flop_counting": "measured: torch.utils.flop_counter.FlopCounterMode on the warm-up step (CPU "
                         "flash-attention ops added with torch's SDPA formulas)",
        "step": "forward + backward of the task loss (zero_grad(set_to_none) included); AdamW timed apart",
        "timing": "best of --steps runs after one counted warm-up run; medians reported too",
    }}
    wall = report["meta"]["phase_wall_s"] = {}
    if "decoding" in args.section_list:
        start = time.perf_counter()
        report["decoding"] = bench_decoding(DECODE_SHAPES[args.shape], device, args.decode_runs)
        wall["decoding"] = time.perf_counter() - start
    if "train" not in args.section_list:
        return report
    start = time.perf_counter()
    report["imports"] = import_cost()
    peaks.sample()
    wall["imports_and_peak"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="uc2-bench-") as tmp:
        paths = write_bench_data(Path(tmp), shape)
        wall["write_data"] = time.perf_counter() - start - sum(v for k, v in wall.items() if k != "decoding")
        report.update(bench_models(shape, paths, args, device, peaks))
    wall["models"] = time.perf_counter() - start - sum(v for k, v in wall.items() if k != "decoding")
    report["matmul_peak"] = {"flops_per_s": peaks.best, "samples": peaks.samples}
    report["memory"] = {"peak_rss_mb": peak_rss_mb(), "cuda_max_allocated_mb": cuda_peak_mb(device)}
    add_fractions(report, peaks.best)
    add_checks(report)
    return report


def scale_section(args: argparse.Namespace) -> dict[str, Any]:
    """The scale section (scripts/bench_scale.py, loaded by path: scripts/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("uc2_bench_scale", REPO_ROOT / "scripts" / "bench_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--captions", str(args.captions), "--world", str(args.world), "--workers", str(args.workers or 4)]
    return module.main(argv + (["--out", str(args.out)] if args.out is not None else []))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.scale:
        return scale_section(args)
    if args.mode == "shortlist":
        report = bench_shortlist(args)
        print(format_shortlist_table(report))
    else:
        report = run_benchmark(args)
        print(format_table(report))
    if args.out is not None:
        write_json(args.out.resolve(), report)
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
