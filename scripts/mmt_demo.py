#!/usr/bin/env python
"""The MMT part of the demo: VTLM-C / TLM pretraining, NMT vs MMT fine-tuning, probes, one report.

    python scripts/mmt_demo.py --demo_dir demo_run [--steps 200 --pretrain_steps 200 --jobs 2]

Needs the demo corpus in ``DEMO/data`` (``scripts/make_demo_data.py``). Every step runs the project's own
tools as subprocesses (``prepro.py multi30k``, ``pretrain.py``, ``train_mmt.py``, ``inf_mmt.py``), up to
``--jobs`` at a time with one thread each; a step whose output exists is skipped. Runs (all tiny: d 96,
2 layers; greedy decoding for speed; lr 1e-3 instead of the seed's 1e-5, which needs thousands of steps):

* pretraining on the en-de + en-fr train pairs: VTLM-C (``vtlmc``) and its text-only ablation TLM (``tlmc``);
* en->de with the source degraded at train and test time (every English class noun and colour word ->
  [MASK]): NMT and MMT from scratch, MMT from VTLM-C and from TLM; en->fr degraded: NMT and MMT;
  en->de clean: NMT and MMT;
* inference on the test split: BLEU (the seed's bleu_tok), accuracy of the masked words in the output
  (restrict / relaxed), and for the degraded runs BLEU with shuffled images (3 permutations, Δ).

Writes ``OUT/mmt.md`` and ``OUT/mmt.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PAIRS = ("de", "fr")


@dataclass(frozen=True)
class Run:
    """One fine-tuning run of the matrix."""

    tgt: str
    images: bool
    init: str  # "scratch", "vtlmc" or "tlm"
    degraded: bool

    @property
    def name(self) -> str:
        return (f"en-{self.tgt}_{'mmt' if self.images else 'nmt'}_{self.init}"
                f"_{'degraded' if self.degraded else 'clean'}")


MATRIX = (Run("de", False, "scratch", True), Run("de", True, "scratch", True), Run("de", True, "vtlmc", True),
          Run("de", True, "tlm", True), Run("fr", False, "scratch", True), Run("fr", True, "scratch", True),
          Run("de", False, "scratch", False), Run("de", True, "scratch", False))


@dataclass
class Ctx:
    demo: Path
    out: Path
    steps: int
    pretrain_steps: int
    jobs: int
    times: dict[str, float] = field(default_factory=dict)

    @property
    def mmt(self) -> Path:
        return self.demo / "mmt"

    def env(self) -> dict[str, str]:
        return dict(os.environ, UC2_DEMO_DIR=str(self.demo), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                    TQDM_DISABLE="1", PYTHONUNBUFFERED="1")


def _py(*args) -> list[str]:
    return [sys.executable, *(str(a) for a in args)]


def run_logged(ctx: Ctx, name: str, cmd: list[str], marker: Path) -> None:
    """Run ``cmd`` unless ``marker`` exists; its output goes to MMT/logs/NAME.log; fail loudly."""
    if marker.exists():
        print(f"[mmt demo] {name}: already done, skipped", flush=True)
        return
    log = ctx.mmt / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as fh:
        result = subprocess.run(cmd, env=ctx.env(), cwd=REPO_ROOT, stdout=fh, stderr=subprocess.STDOUT)
    ctx.times[name] = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"[mmt demo] {name} failed (exit {result.returncode}); see {log}")
    print(f"[mmt demo] {name}: {ctx.times[name]:.0f}s", flush=True)


def parallel(ctx: Ctx, jobs: list[tuple[str, list[str], Path]]) -> None:
    with ThreadPoolExecutor(max_workers=ctx.jobs) as pool:
        for future in [pool.submit(run_logged, ctx, *job) for job in jobs]:
            future.result()


def prepare(ctx: Ctx) -> None:
    """Multi30K-layout text from the demo pairs, converted by prepro.py multi30k; word lists, lexicons."""
    from data.demo.mmt import english_words, translation_lexicon, write_multi30k_layout

    ctx.mmt.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "config" / "xlm_demo_model.json", ctx.mmt / "xlm_demo_model.json")
    (ctx.mmt / "words.txt").write_text("\n".join(english_words()) + "\n", encoding="utf-8")
    for tgt in PAIRS:
        (ctx.mmt / f"lex_{tgt}.json").write_text(json.dumps(translation_lexicon(tgt), ensure_ascii=False),
                                                 encoding="utf-8")
        raw = write_multi30k_layout(ctx.demo / "data" / "raw", ctx.mmt / f"m30k_en-{tgt}", tgt)
        run_logged(ctx, f"prepro en-{tgt}", _py(REPO_ROOT / "prepro.py", "multi30k", "--input", raw, "--src", "en",
                                                "--tgt", tgt, "--output", ctx.mmt / "txt", "--tokenizer",
                                                ctx.demo / "data" / "tokenizer", "--img_db",
                                                ctx.demo / "data" / "img_db" / "demo_imgs", "--splits", "train",
                                                "val", "test_2016_flickr", "--no_progress", "--overwrite"),
                   ctx.mmt / "txt" / f"multi30k_en-{tgt}_test_2016_flickr.db" / "meta.json")


def pretrain_jobs(ctx: Ctx) -> list[tuple[str, list[str], Path]]:
    jobs = []
    for task, run in (("vtlmc", "vtlmc"), ("tlmc", "tlm")):
        cmd = _py(REPO_ROOT / "pretrain.py", "--config", REPO_ROOT / "config" / "vtlmc_demo.json",
                  "--output_dir", ctx.mmt / run, "--num_train_steps", ctx.pretrain_steps,
                  "--valid_steps", ctx.pretrain_steps, "--save_steps", ctx.pretrain_steps,
                  *[x for i in range(2) for x in (f"--train_datasets.{i}.tasks", f'["{task}"]',
                                                  f"--val_datasets.{i}.tasks", f'["{task}"]')])
        jobs.append((f"pretrain {run}", cmd, ctx.mmt / run / "model_final.pt"))
    return jobs


def finetune_cmd(ctx: Ctx, run: Run) -> list[str]:
    txt = ctx.mmt / "txt"
    base = f"multi30k_en-{run.tgt}"
    init = (["--init", "random"] if run.init == "scratch"
            else ["--init", "checkpoint", "--checkpoint", ctx.mmt / run.init / "model_final.pt"])
    degrade = (["--degrade.mode", "words", "--degrade.words_file", ctx.mmt / "words.txt"] if run.degraded else [])
    return _py(REPO_ROOT / "train_mmt.py", "--config", REPO_ROOT / "config" / "mmt_demo.json",
               "--output_dir", ctx.mmt / "runs" / run.name, "--tgt_lang", run.tgt,
               "--use_images", str(run.images).lower(), "--train_db", txt / f"{base}_train.db",
               "--val_db", txt / f"{base}_val.db", "--test_dbs.test2016", txt / f"{base}_test_2016_flickr.db",
               "--num_train_steps", ctx.steps, "--valid_steps", ctx.steps, "--save_steps", ctx.steps, *init, *degrade)


def infer_cmd(ctx: Ctx, run: Run) -> list[str]:
    shuffles = ["--shuffles", "3"] if run.degraded and run.tgt == "de" and run.init == "scratch" else []
    return _py(REPO_ROOT / "inf_mmt.py", "--run", ctx.mmt / "runs" / run.name, "--no_meteor",
               "--lexicon", ctx.mmt / f"lex_{run.tgt}.json", *shuffles,
               *(["--degrade.mode", "words", "--degrade.words_file", ctx.mmt / "words.txt"] if run.degraded else []))


def report(ctx: Ctx, runs: tuple[Run, ...] = MATRIX) -> dict:
    """Table of the runs from each run's results.json."""
    rows, table = {}, ["| pair | system | init | source | BLEU | masked words restrict / relaxed (n) | "
                       "BLEU shuffled images (Δ) |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        res = json.loads((ctx.mmt / "runs" / run.name / "results.json").read_text(encoding="utf-8"))["test2016"]
        rows[run.name] = res
        mw = res.get("masked_words")
        words = f"{mw['restrict']:.1f} / {mw['relaxed']:.1f} ({mw['n']:.0f})" if mw else "–"
        inc = res.get("incongruent")
        shuffled = f"{inc['shuffled_mean']:.1f} (Δ {inc['delta']:+.1f})" if inc else "–"
        table.append(f"| en-{run.tgt} | {'MMT' if run.images else 'NMT'} | {run.init} | "
                     f"{'degraded' if run.degraded else 'clean'} | {res['bleu_tok']['score']:.1f} | {words} | "
                     f"{shuffled} |")
    ctx.out.mkdir(parents=True, exist_ok=True)
    for path in (ctx.out / "mmt.md", ctx.mmt / "report.md"):  # the second marks the demo stage as done
        path.write_text("\n".join(table) + "\n", encoding="utf-8")
    (ctx.out / "mmt.json").write_text(json.dumps({"runs": rows, "times_s": ctx.times}, indent=1), encoding="utf-8")
    print("\n".join(table), flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo_dir", type=Path, default=REPO_ROOT / "demo_run")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "demo")
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps per run")
    parser.add_argument("--pretrain_steps", type=int, default=200, help="VTLM-C / TLM pretraining steps")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    args = parser.parse_args(argv)
    ctx = Ctx(args.demo_dir.resolve(), args.out.resolve(), args.steps, args.pretrain_steps, args.jobs)
    if not (ctx.demo / "data" / "stats.json").is_file():
        raise SystemExit(f"[mmt demo] no demo corpus in {ctx.demo / 'data'}: run scripts/make_demo_data.py first")
    return run_matrix(ctx, MATRIX)


def run_matrix(ctx: Ctx, runs: tuple[Run, ...]) -> dict:
    """Prepare, pretrain (when a run needs it), fine-tune and evaluate ``runs``; returns their results."""
    start = time.perf_counter()
    prepare(ctx)
    if any(r.init != "scratch" for r in runs):
        parallel(ctx, pretrain_jobs(ctx))
    parallel(ctx, [(f"fine-tune {r.name}", finetune_cmd(ctx, r), ctx.mmt / "runs" / r.name / "ckpt" / "model_best.pt")
                   for r in runs])
    parallel(ctx, [(f"inference {r.name}", infer_cmd(ctx, r), ctx.mmt / "runs" / r.name / "results.json")
                   for r in runs])
    rows = report(ctx, runs)
    print(f"[mmt demo] done in {time.perf_counter() - start:.0f}s; report: {ctx.out / 'mmt.md'}", flush=True)
    return rows


if __name__ == "__main__":
    main()
