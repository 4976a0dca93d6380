#!/usr/bin/env python
"""Collect the demo's results into one report: the paper's table 1 in miniature, VQA against the majority
baseline, with and without pretraining, plus stage times and plots.

    python scripts/demo_report.py --demo_dir demo_run --out results/demo [--times times.json]

Reads what the demo's runs wrote (``itm_*/results/results.json``, ``itm_all_lang_itc/results/shortlist.json``,
``vqa_*/test.scores.json``, ``mmt/report.md``) and writes
``OUT/report.md`` and ``OUT/report.json`` atomically, and prints the Markdown.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]

#: run folder -> setting name in the report (pretrained first, then the baselines)
RETRIEVAL_RUNS = {
    "itm_en_only": "English-only fine-tune",
    "itm_all_lang": "All-language fine-tune",
    "itm_en_only_nopt": "English-only fine-tune, no pretraining",
    "itm_all_lang_nopt": "All-language fine-tune, no pretraining",
}
VQA_RUNS = {
    "vqa_en": "UC2 fine-tuned", "vqa_ja": "UC2 fine-tuned",
    "vqa_en_nopt": "no pretraining", "vqa_ja_nopt": "no pretraining",
}


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def retrieval_results(demo_dir: Path) -> list[dict]:
    """Per-language rows of every retrieval run, renamed to the report's setting names."""
    rows = []
    for run, setting in RETRIEVAL_RUNS.items():
        path = demo_dir / run / "results" / "results.json"
        if not path.is_file():
            continue
        for row in _read_json(path).get("detail", []):
            metrics = {k: v for k, v in row.items() if k not in ("setting", "dataset", "lang")}
            rows.append({"setting": setting, "dataset": row["dataset"], "lang": row["lang"], "metrics": metrics})
    return rows


def chance_rows(demo_dir: Path, seeds: int = 20, runs: Sequence[str] = tuple(RETRIEVAL_RUNS)) -> list[dict]:
    """A "random scores" row per language: the mean AR of random score matrices with the test set's own
    caption-to-image map (from a run's saved ``scores_*.npz``), i.e. chance level for these test sets."""
    import numpy as np

    from evaluation.retrieval_metrics import retrieval_recalls

    rows = []
    for run in runs:
        files = sorted((demo_dir / run / "results").glob("scores_*.npz"))
        for path in files:
            with np.load(path, allow_pickle=False) as saved:
                txt2img, shape = saved["txt2img"], saved["scores"].shape
            rng = np.random.default_rng(0)
            runs = [retrieval_recalls(rng.random(shape), txt2img) for _ in range(seeds)]
            lang = path.stem.split("_")[-2] if path.stem.count("_") >= 2 else path.stem
            rows.append({"setting": "random scores (chance)", "dataset": "demo", "lang": lang,
                         "metrics": {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}})
        if files:
            break
    return rows


def vqa_results(demo_dir: Path) -> list[dict]:
    rows = []
    for run, setting in VQA_RUNS.items():
        path = demo_dir / run / "test.scores.json"
        if path.is_file():
            rows.append({**_read_json(path), "setting": setting})
    return rows


#: the fast-retrieval stage's table (scripts/run_demo.py: ITC head on the all-language fine-tune)
SHORTLIST_TABLE = Path("itm_all_lang_itc") / "results" / "shortlist.json"


def shortlist_results(demo_dir: Path) -> list[dict]:
    """The rows of the fast-retrieval table (evaluation/shortlist.py), [] when that stage has not run."""
    path = demo_dir / SHORTLIST_TABLE
    return _read_json(path) if path.is_file() else []


def plot_links(demo_dir: Path, out: Path) -> list[str]:
    """PNG plots of the pretraining run (loss per task, validation, lr), if matplotlib can draw them."""
    try:
        from scripts.plot_run import plot_run
        paths = plot_run(demo_dir / "pretrain", out_dir=out / "plots")
    except Exception as exc:  # noqa: BLE001 - plots are a convenience; the report stands without them
        return [f"(plots not drawn: {exc})"]
    return [f"![{p.stem}](plots/{p.name})" for p in paths]


def render(retrieval: list[dict], vqa: list[dict], times: dict[str, float], plots: list[str], mmt: str = "",
           shortlist: Sequence[dict] = ()) -> str:
    from evaluation.results_table import demo_markdown, detail_markdown, shortlist_markdown, vqa_markdown

    parts = ["# UC2 demo report", "",
             "Generated corpus (see data/demo/README.md); tiny model on CPU. The 'random scores' row "
             "is chance level for these test sets.", ""]
    if retrieval:
        parts += ["## Retrieval: Average Recall per language (paper table 1 in miniature)", "",
                  demo_markdown(retrieval, "demo"), "", "<details><summary>Recall@K</summary>", "",
                  detail_markdown(retrieval), "", "</details>", ""]
    if shortlist:
        parts += ["## Fast retrieval: ITC shortlist + cross-encoder rerank (all-language fine-tune)", "",
                  shortlist_markdown(shortlist).rstrip(), ""]
    if vqa:
        parts += ["## VQA (test split) against the majority-answer baseline", "", vqa_markdown(vqa), ""]
    if mmt:
        parts += ["## MMT: NMT vs MMT, degraded source, shuffled images (test split, bleu_tok)", "", mmt, ""]
    if times:
        parts += ["## Stage times", "", "| stage | seconds |", "|---|---|",
                  *(f"| {name} | {sec:.0f} |" for name, sec in times.items()), ""]
    if plots:
        parts += ["## Pretraining curves", "", *plots, ""]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> str:
    from utils.atomic import atomic_write_json, atomic_write_text

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--demo_dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--times", type=Path, help="JSON {stage: seconds} written by run_demo.py")
    args = p.parse_args(argv)
    retrieval, vqa = retrieval_results(args.demo_dir), vqa_results(args.demo_dir)
    retrieval += chance_rows(args.demo_dir)
    times = _read_json(args.times) if args.times and args.times.is_file() else {}
    args.out.mkdir(parents=True, exist_ok=True)
    mmt_table = args.demo_dir / "mmt" / "report.md"  # written by scripts/mmt_demo.py
    mmt = mmt_table.read_text(encoding="utf-8").strip() if mmt_table.is_file() else ""
    shortlist = shortlist_results(args.demo_dir)
    text = render(retrieval, vqa, times, plot_links(args.demo_dir, args.out), mmt, shortlist)
    atomic_write_text(args.out / "report.md", text)
    atomic_write_json({"retrieval": retrieval, "shortlist": shortlist, "vqa": vqa, "stage_seconds": times},
                      args.out / "report.json")
    print(text)
    return text


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
