#!/usr/bin/env python
"""Run the UC2 demo end to end on the generated multilingual corpus (the README's first command).

Each stage runs the project's own command-line tool in a subprocess, exactly as a user would run it on
real data, and prints one line with its wall time. Stages whose output already exists are skipped, so a
second run only redoes what is missing (``--force`` redoes everything).

Paths: everything goes under ``--demo_dir`` (default ``<repo>/demo_run``), exported to the configs as
``${UC2_DEMO_DIR}``; the report goes to ``--results`` (default ``<repo>/results/demo``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Stage:
    """One step of the demo: a command, and the file whose presence means it is done."""

    name: str
    command: Callable[["DemoPaths"], list[str]]
    done_marker: Callable[["DemoPaths"], Path]


#: Step budgets. "quick" (the default, about 9 minutes on 2 CPU cores) runs every stage with short
#: schedules; "full" uses the configs as shipped (the schedules under which the demo model measurably
#: grounds words in regions: VQA starts to use the image after ~2500 steps; 35 minutes, measured 2026-12-02).
PROFILES: dict[str, dict[str, list[str]]] = {
    "quick": {
        "corpus": ["--n_val", "50", "--n_test", "50"],
        "pretrain": [],
        "itm": ["--num_train_steps", "300", "--warmup_steps", "30", "--valid_steps", "0", "--save_steps", "300"],
        "vqa": ["--num_train_steps", "1000", "--warmup_steps", "100", "--valid_steps", "500",
                "--save_steps", "500"],
        "mmt": [],
    },
    "full": {"corpus": [], "pretrain": [], "itm": [], "vqa": [], "mmt": ["--steps", "600", "--pretrain_steps", "600"]},
}


@dataclass
class DemoPaths:
    demo_dir: Path
    results: Path
    profile: str = "quick"

    def extra(self, kind: str) -> list[str]:
        """Command-line overrides of this profile for one kind of stage."""
        return PROFILES[self.profile][kind]

    @property
    def data(self) -> Path:
        return self.demo_dir / "data"


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


def stages() -> list[Stage]:
    """The demo pipeline, in order. Each command is what a user would type for real data."""
    langs = ["en", "de", "fr", "cs", "ja", "zh"]
    return [
        Stage("build demo corpus",
              lambda p: _py(str(REPO_ROOT / "scripts" / "make_demo_data.py"), "--out", str(p.data), "--force",
                            *p.extra("corpus")),
              lambda p: p.data / "stats.json"),
        Stage("text-only XLM-R stand-in",
              lambda p: _py(str(REPO_ROOT / "scripts" / "make_tiny_xlmr.py"), "--tokenizer", str(p.data / "tokenizer"),
                            "--text", str(p.data / "raw" / "captions_train.jsonl"), "--out", str(p.demo_dir / "xlmr"),
                            "--steps", "150", "--batch", "32"),
              lambda p: p.demo_dir / "xlmr" / "config.json"),
        Stage("early adaptation",
              lambda p: _py(str(REPO_ROOT / "scripts" / "early_adaptation.py"), "--xlmr", str(p.demo_dir / "xlmr"),
                            "--img_db", str(p.data / "img_db" / "demo_imgs"), "--label_dir", str(p.data / "raw" / "labels"),
                            "--langs", *langs, "--out", str(p.demo_dir / "early_adaptation.pt"), "--steps", "150",
                            "--regions_per_batch", "512", "--min_bb", "3"),
              lambda p: p.demo_dir / "early_adaptation.pt"),
        # A tiny model from a monolingual stand-in sits on the ITM plateau for thousands of steps when all
        # tasks and languages are mixed from the start (real XLM-R is cross-lingual; this stand-in is not),
        # so the demo first warms up English ITM alone, then pretrains on the full mix from that model.
        Stage("pretraining warm-up (English ITM)",
              lambda p: _py(str(REPO_ROOT / "pretrain.py"), "--config",
                            str(REPO_ROOT / "config" / "demo_pretrain_warmup.json")),
              lambda p: p.demo_dir / "pretrain_warmup" / "model_final.pt"),
        Stage("pretraining (MLM + ITM + MRTM + VTLM)",
              lambda p: _py(str(REPO_ROOT / "pretrain.py"), "--config", str(REPO_ROOT / "config" / "demo_pretrain.json"),
                            "--checkpoint", str(p.demo_dir / "pretrain_warmup" / "model_final.pt"),
                            "--early_adaptation", "null", *p.extra("pretrain")),
              lambda p: p.demo_dir / "pretrain" / "model_final.pt"),
        Stage("no-pretraining baseline weights (XLM-R stand-in + EA)",
              lambda p: _py(str(REPO_ROOT / "scripts" / "xlmr_to_uc2.py"), "--xlmr", str(p.demo_dir / "xlmr"),
                            "--img_db", str(p.data / "img_db" / "demo_imgs"), "--min_bb", "3",
                            "--early_adaptation", str(p.demo_dir / "early_adaptation.pt"),
                            "--out", str(p.demo_dir / "nopt")),
              lambda p: p.demo_dir / "nopt" / "model_final.pt"),
        *[stage for setting in ("en_only", "all_lang") for stage in _retrieval_stages(setting)],
        # Fast retrieval: an ITC shortlist head fitted onto the all-language fine-tune (rank_weight 0: the
        # cross-encoder is not trained, so the rows above keep their numbers), then the shortlist table.
        Stage("fast retrieval: ITC shortlist head on the all-language fine-tune",
              lambda p: _py(str(REPO_ROOT / "train.py"), "--task", "itm_rank", "--config",
                            str(REPO_ROOT / "config" / "itm_demo_all_lang.json"), *p.extra("itm"),
                            "--checkpoint", str(_latest_model(p.demo_dir / "itm_all_lang" / "ckpt")),
                            "--output_dir", str(p.demo_dir / "itm_all_lang_itc"), *ITC_HEAD_OVERRIDES),
              lambda p: p.demo_dir / "itm_all_lang_itc" / "results" / "shortlist.json"),
        # After UC2's retrieval runs, so that the MLA report puts their rows beside its own.
        Stage("MLA: frozen English dual encoder + language acquirers",
              lambda p: _py(str(REPO_ROOT / "scripts" / "mla_demo.py"), "--demo_dir", str(p.demo_dir),
                            "--results", str(p.results), "--profile", p.profile),
              lambda p: p.demo_dir / "mla" / "report.json"),
        *[stage for lang in ("en", "ja") for stage in _vqa_stages(lang)],
        Stage("MMT: VTLM-C / TLM pretraining, NMT vs MMT, degraded source, shuffled images",
              lambda p: _py(str(REPO_ROOT / "scripts" / "mmt_demo.py"), "--demo_dir", str(p.demo_dir),
                            "--out", str(p.results), *p.extra("mmt")),
              lambda p: p.demo_dir / "mmt" / "report.md"),
    ]


#: the shortlist head's fit (measured 2026-12-04: 2000 steps, 45 s on one core); the shortlist table then
#: uses the default k (ShortlistOptions: 4 % of the gallery, i.e. 2 of 50 images and 8 of 200 captions)
ITC_HEAD_OVERRIDES = ["--rank_weight", "0", "--tasks", '[{"task": "itc", "batch_size": 64, "dim": 128}]',
                      "--num_train_steps", "2000", "--warmup_steps", "100", "--learning_rate", "0.002",
                      "--valid_steps", "0", "--save_steps", "2000"]


def _latest_model(ckpt: Path) -> Path:
    """model_best.pt when the run validated, else its newest complete step's model (the path model_best.pt
    while the run does not exist yet: the command is built before the stage before it has run)."""
    from utils.checkpoint import CheckpointManager

    return CheckpointManager(ckpt).best_or_latest_model() or ckpt / "model_best.pt"


def _baseline_overrides(p: DemoPaths, run: str) -> list[str]:
    """Fine-tune from the XLM-R stand-in (no vision-language pretraining) into ``run``."""
    return ["--checkpoint", str(p.demo_dir / "nopt" / "model_final.pt"),
            "--model_config", str(p.demo_dir / "nopt" / "model.json"), "--output_dir", str(p.demo_dir / run)]


def _retrieval_stages(setting: str) -> list[Stage]:
    config = str(REPO_ROOT / "config" / f"itm_demo_{setting}.json")
    return [
        Stage(f"retrieval fine-tuning, {setting}",
              lambda p: _py(str(REPO_ROOT / "train_itm.py"), "--config", config, *p.extra("itm")),
              lambda p: p.demo_dir / f"itm_{setting}" / "results" / "results.json"),
        Stage(f"retrieval fine-tuning, {setting}, no pretraining",
              lambda p: _py(str(REPO_ROOT / "train_itm.py"), "--config", config, *p.extra("itm"),
                            *_baseline_overrides(p, f"itm_{setting}_nopt")),
              lambda p: p.demo_dir / f"itm_{setting}_nopt" / "results" / "results.json"),
    ]


def _vqa_stages(lang: str) -> list[Stage]:
    config = str(REPO_ROOT / "config" / f"vqa_demo_{lang}.json")
    stages = []
    for run, extra in ((f"vqa_{lang}", lambda p: []), (f"vqa_{lang}_nopt", lambda p, r=f"vqa_{lang}_nopt": _baseline_overrides(p, r))):
        label = "" if run.endswith(lang) else ", no pretraining"
        stages += [
            Stage(f"VQA fine-tuning, {lang}{label}",
                  lambda p, extra=extra: _py(str(REPO_ROOT / "train_vqa.py"), "--config", config,
                                             *p.extra("vqa"), *extra(p)),
                  lambda p, run=run: p.demo_dir / run / "ckpt" / "model_best.pt"),
            Stage(f"VQA test inference, {lang}{label}",
                  lambda p, run=run: _py(str(REPO_ROOT / "inf_vqa.py"), "--run_dir", str(p.demo_dir / run),
                                         "--txt_db", str(p.data / "txt_db" / f"vqa_{lang}_test.db"),
                                         "--output", str(p.demo_dir / run / "test.json"),
                                         "--dataset", "demo",
                                         "--setting", "UC2 fine-tuned" if not label else "no pretraining"),
                  lambda p, run=run: p.demo_dir / run / "test.scores.json"),
        ]
    return stages


def run_stage(stage: Stage, paths: DemoPaths, env: dict[str, str], force: bool) -> float:
    marker = stage.done_marker(paths)
    if marker.exists() and not force:
        print(f"[demo] {stage.name}: already done ({marker}), skipped", flush=True)
        return 0.0
    start = time.perf_counter()
    print(f"[demo] {stage.name} ...", flush=True)
    result = subprocess.run(stage.command(paths), env=env, cwd=REPO_ROOT)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"[demo] {stage.name} failed (exit {result.returncode}) after {elapsed:.0f}s")
    print(f"[demo] {stage.name}: done in {elapsed:.1f}s", flush=True)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo_dir", type=Path, default=REPO_ROOT / "demo_run")
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "results" / "demo")
    parser.add_argument("--force", action="store_true", help="redo every stage")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick",
                        help="quick: short schedules, ~9 min on 2 cores (default); full: the shipped configs")
    args = parser.parse_args(argv)
    paths = DemoPaths(args.demo_dir.resolve(), args.results.resolve(), args.profile)
    if args.force and paths.demo_dir.exists():
        shutil.rmtree(paths.demo_dir)
    paths.demo_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, UC2_DEMO_DIR=str(paths.demo_dir), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    times: dict[str, float] = {}
    for stage in stages():
        times[stage.name] = run_stage(stage, paths, env, args.force)
    paths.results.mkdir(parents=True, exist_ok=True)
    times_file = paths.results / "stage_times.json"
    times_file.write_text(json.dumps(times, indent=1), encoding="utf-8")
    subprocess.run(_py(str(REPO_ROOT / "scripts" / "demo_report.py"), "--demo_dir", str(paths.demo_dir),
                       "--out", str(paths.results), "--times", str(times_file)), env=env, cwd=REPO_ROOT, check=True)
    print(f"[demo] all stages done in {sum(times.values()):.0f}s; report: {paths.results / 'report.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
