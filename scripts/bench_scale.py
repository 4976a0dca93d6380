#!/usr/bin/env python
"""Scale section of the benchmark: the data path of a 20 M-caption pretraining task on 8 ranks.

    python scripts/bench_scale.py [--captions 20000000] [--world 8] [--workers 4] [--out FILE.json]
    (also: python scripts/benchmark.py --scale ...)

Synthetic metadata, no feature files: six caption "databases" (the released config's CC in six languages,
one caption per image and language) over one image set, given to the project's real
:class:`tasks.base.ExampleSource`, :class:`TaskDataset`, ITM objective, :class:`TokenBucketSampler` and
DataLoader workers. Only the reads are synthetic: a caption's token ids and an image's regions are drawn
from its id instead of read from LMDB (the real readers pickle the same way: paths plus shared tables).
The example tables are built with numpy instead of from JSON side files (20 M-entry JSON dicts would cost
minutes and GBs in the main process, which is not what is measured here).

Measured, with the targets of the checks (issue 15):
* batch plan of one epoch on rank 0 of ``--world``: seconds and peak traced memory (< 20 s, < 1 GB);
  and the time to resume 1.5 epochs in (skipped epochs only counted);
* pickled size of the task dataset, what each worker receives (< 1 MB);
* memory of ``--workers`` forkserver workers after the first batch: summed RSS, PSS and private
  (USS) memory from /proc/PID/smaps_rollup. The check is on PSS (< 1 GB): summed RSS counts the
  shared pages of torch's libraries (~200 MB, mapped by every worker from the forkserver) once per
  worker. Measured with small (1024-token) batches so that in-flight batches do not hide the dataset's
  cost; compare a small ``--captions`` run to see that worker memory does not grow with the data.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
import tracemalloc
from pathlib import Path

if __name__ == "__main__":  # run as a script from any cwd: make the repository's packages importable
    _ROOT = str(Path(__file__).resolve().parents[1])
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)

import numpy as np

LANGS = ("en", "de", "fr", "cs", "ja", "zh")
TARGETS = {"plan_s": 20.0, "plan_peak_mb": 1024.0, "dataset_pickle_mb": 1.0, "workers_mb": 1024.0}


def measure_plan(lens: np.ndarray, world: int, batch_tokens: int) -> dict[str, float]:
    """Rank 0's epoch-0 plan: time and traced peak; then the time to resume 1.5 epochs in."""
    from data.sampler import TokenBucketSampler

    sampler = TokenBucketSampler(lens, batch_tokens, seed=0, rank=0, world_size=world)
    tracemalloc.start()
    start = time.perf_counter()
    plan = sampler.plan(0)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    position = len(plan) + len(plan) // 2
    start = time.perf_counter()
    next(iter(sampler.batches(position)))
    return {"plan_s": seconds, "plan_peak_mb": peak / 2**20, "plan_batches": len(plan),
            "plan_examples": int(plan.bounds[-1]), "resume_1.5_epochs_s": time.perf_counter() - start}


def smaps(pid: int) -> dict[str, float]:
    """Rss, Pss and private (USS) memory of a process, MiB, from /proc/PID/smaps_rollup."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                out[key] = int(rest.split()[0]) / 1024
    return {"rss": out["Rss"], "pss": out["Pss"], "uss": out["Private_Clean"] + out["Private_Dirty"]}


def worker_pids() -> list[int]:
    """This process's DataLoader workers: the children of its forkserver."""
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    pids = []
    for child in map(int, children):
        path = Path(f"/proc/{child}/task/{child}/children")
        pids += [int(p) for p in path.read_text().split()] if path.exists() else []
    return pids


def measure_workers(task, workers: int) -> dict[str, float]:
    """Summed memory of the task's ``workers`` loader workers once the first batch has arrived."""
    stream = task.train_batches(0)
    batch = next(stream)
    pids = worker_pids()
    mems = [smaps(pid) for pid in pids]
    out = {f"workers_{k}_mb": sum(m[k] for m in mems) for k in ("rss", "pss", "uss")}
    out.update(workers_found=len(pids), first_batch_examples=int(batch["input_ids"].shape[0]))
    del batch, stream  # ends the workers
    return out


def build_task(captions: int, world: int, workers: int, batch_tokens: int):
    """The ITM task over six synthetic languages, rank 0 of ``world``, with the project's classes."""
    from data.sampler import TokenBucketSampler
    from tasks.base import ExampleSource, LoaderOptions, PretrainTask, TaskDataset
    from tasks.itm import ItmConfig
    from tasks.registry import get_task

    from data.synthetic import SyntheticCaptions, SyntheticImages

    per_lang = captions // len(LANGS)
    images = SyntheticImages(per_lang)
    source = ExampleSource([(SyntheticCaptions(lang, per_lang, seed=k), images) for k, lang in enumerate(LANGS)])
    objective = get_task("itm")(ItmConfig(task="itm"))
    sampler = TokenBucketSampler(source.lens, batch_tokens, seed=0, rank=0, world_size=world)
    return PretrainTask("itm_cc", 1.0, objective, TaskDataset(source, objective), sampler,
                        options=LoaderOptions(num_workers=workers))


def run(captions: int, world: int, workers: int, batch_tokens: int = 10240, worker_batch_tokens: int = 1024) -> dict:
    """All measurements and their checks, as one JSON-able dict.

    The workers are measured with ``worker_batch_tokens`` batches: at 10240 tokens each batch in flight
    holds ~80 MB of 2048-d float32 features (4 workers x prefetch 2 = 8 in flight), which would hide what
    the dataset itself costs a worker.
    """
    start = time.perf_counter()
    task = build_task(captions, world, workers, batch_tokens)
    report = {"captions": len(task.train_data), "world_size": world, "workers": workers,
              "batch_tokens": batch_tokens, "worker_batch_tokens": worker_batch_tokens,
              "build_source_s": time.perf_counter() - start}
    report.update(measure_plan(task.train_data.source.lens, world, batch_tokens))
    report["dataset_pickle_mb"] = len(pickle.dumps(task.train_data)) / 2**20
    task.train_sampler.batch_tokens = worker_batch_tokens
    report.update(measure_workers(task, workers))
    report["checks"] = {
        "plan_under_20s": report["plan_s"] < TARGETS["plan_s"],
        "plan_under_1gb": report["plan_peak_mb"] < TARGETS["plan_peak_mb"],
        "dataset_pickle_under_1mb": report["dataset_pickle_mb"] < TARGETS["dataset_pickle_mb"],
        # PSS: shared library pages (torch, preloaded once by the forkserver) counted once, not per worker
        "workers_under_1gb_pss": report["workers_pss_mb"] < TARGETS["workers_mb"],
    }
    report["total_s"] = time.perf_counter() - start
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", type=int, default=20_000_000)
    parser.add_argument("--world", type=int, default=8, help="ranks the sampler shards over (rank 0 measured)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="JSON report path (default: print only)")
    args = parser.parse_args(argv)
    report = run(args.captions, args.world, args.workers)
    text = json.dumps(report, indent=1, sort_keys=True)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    if not all(report["checks"].values()):
        failed = [k for k, ok in report["checks"].items() if not ok]
        print(f"bench_scale: checks failed: {failed}", file=sys.stderr)
    return report


if __name__ == "__main__":
    sys.exit(0 if all(main()["checks"].values()) else 1)
