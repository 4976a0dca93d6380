#!/usr/bin/env python
"""The MLA section of the demo: a frozen English dual encoder learns de, fr, cs, ja and zh through acquirers.

    python scripts/mla_demo.py --demo_dir demo_run --results results/demo [--profile quick]

Needs the demo corpus (``DEMO/data``) and the tiny XLM-R stand-in (``DEMO/xlmr``, whose word embeddings
initialise the non-native embedding) from scripts/run_demo.py. Every run is ``train_mla.main`` on a config
derived from ``config/mla_demo_*.json`` (written to ``DEMO/mla/configs/``), in this process:

1. ``native``: a CLIP-style dual encoder trained on English captions only, then frozen;
2. MLA: NLT then LE for the five languages, plus the ablations in miniature (NLT only, LE only, without
   acquirers, random non-native embedding) and "add zh later" (four languages first; zh added with the shared
   embedding frozen, and once with it trained);
3. the report ``RESULTS/mla_report.md`` (+ ``.json``): per-language AR beside UC2's runs (when present) and
   chance, with the same metric and table code, and the bitwise checks (English scores, frozen weights,
   earlier languages after adding zh).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

LANGS = ("de", "fr", "cs", "ja", "zh")
FIRST_FOUR, LATER = ("de", "fr", "cs", "ja"), "zh"
#: steps per profile; NLT gets 5x LE's steps here (MLA: 10x) because the demo's LE saturates fast [our choice]
PROFILES = {"quick": {"native": 300, "nlt": 200, "le": 40, "batch": 32},
            "full": {"native": 600, "nlt": 500, "le": 100, "batch": 64}}
NATIVE_SETTING = "Native English dual encoder (no acquisition)"


def _base(name: str) -> dict:
    return json.loads((REPO_ROOT / "config" / f"mla_demo_{name}.json").read_text(encoding="utf-8"))


def _languages(stage: str, langs: Sequence[str]) -> list[dict]:
    db = "${UC2_DEMO_DIR}/data/txt_db"
    if stage == "nlt":
        return [{"lang": x, "paired_db": f"{db}/paired_en-{x}_train.db"} for x in langs]
    return [{"lang": x, "caption_db": f"{db}/cap_{x}_train.db"} for x in langs]


def _tests(langs: Sequence[str]) -> list[dict]:
    return [{"name": f"demo_{x}_test", "txt_db": f"${{UC2_DEMO_DIR}}/data/txt_db/cap_{x}_test.db",
             "img_db": "${UC2_DEMO_DIR}/data/img_db/demo_imgs", "dataset": "demo", "lang": x} for x in langs]


def _run_cfg(stage: str, out: str, steps: dict, langs: Sequence[str] = LANGS, setting: str = "",
             tests: Sequence[str] | None = None, steps_key: str = "", **acq: Any) -> dict:
    """A demo run config: ``stage`` nlt/le on ``langs`` into ``DEMO/mla/out``, tested on ``tests`` (default
    en + ``langs``; empty: no test)."""
    cfg = _base("nlt" if stage == "nlt" else "le")
    n = steps[steps_key or stage] * len(langs) // len(LANGS)   # the same steps per language as the main run
    cfg.update(output_dir=f"${{UC2_DEMO_DIR}}/mla/{out}", languages=_languages(stage, langs), num_train_steps=n,
               warmup_steps=n // 10, batch_size=steps["batch"], valid_steps=0, save_steps=0, setting=setting,
               test_datasets=_tests(["en", *langs] if tests is None else tests))
    cfg["acquisition"] = {**cfg["acquisition"], **acq}
    return cfg


def _chain(name: str, steps: dict, setting: str, langs: Sequence[str] = LANGS, **acq: Any) -> list[tuple[str, dict]]:
    """NLT then LE from its weights (MLA's recipe) as two runs ``{name}_nlt`` and ``{name}``."""
    init = f"${{UC2_DEMO_DIR}}/mla/{name}_nlt/model_final.pt"
    return [(f"{name}_nlt", _run_cfg("nlt", f"{name}_nlt", steps, langs, tests=(), **acq)),
            (name, _run_cfg("le", name, steps, langs, setting, **{**acq, "init_from": init}))]


def plan(steps: dict) -> list[tuple[str, dict]]:
    """Every run of the section, in order (a later run may read an earlier one's weights)."""
    native = _base("native")
    native.update(num_train_steps=steps["native"], warmup_steps=steps["native"] // 10, batch_size=steps["batch"],
                  valid_steps=0, save_steps=0, setting=NATIVE_SETTING)
    native["native"] = {"config": str(REPO_ROOT / "config" / "mla_demo_native_model.json")}
    le_only = _run_cfg("le", "le_only", steps, setting="MLA: LE only", steps_key="nlt")
    le_only["learning_rate"] = _base("nlt")["learning_rate"]   # LE alone, with NLT's budget and lr
    four = "${UC2_DEMO_DIR}/mla/four/model_final.pt"
    added = "${UC2_DEMO_DIR}/mla/add_zh_nlt/model_final.pt"
    drift = "${UC2_DEMO_DIR}/mla/add_zh_drift_nlt/model_final.pt"
    return [
        ("native", native),
        ("nlt", _run_cfg("nlt", "nlt", steps, setting="MLA: NLT only")),
        ("nlt_le", _run_cfg("le", "nlt_le", steps, setting="MLA: NLT -> LE",
                            init_from="${UC2_DEMO_DIR}/mla/nlt/model_final.pt")),
        ("le_only", le_only),
        *_chain("no_acquirers", steps, "MLA w/o acquirers (embedding only)", use_acquirers=False),
        *_chain("random_embedding", steps, "MLA w/o embedding init (random)", embedding_init=""),
        *_chain("four", steps, "MLA, 4 languages (before adding zh)", FIRST_FOUR),
        ("add_zh_nlt", _run_cfg("nlt", "add_zh_nlt", steps, [LATER], tests=(), init_from=four,
                                train_embedding=False)),
        ("add_zh", _run_cfg("le", "add_zh", steps, [LATER], "MLA, zh added later (embedding frozen)",
                            tests=("en", *LANGS), init_from=added, train_embedding=False)),
        ("add_zh_drift_nlt", _run_cfg("nlt", "add_zh_drift_nlt", steps, [LATER], tests=(), init_from=four,
                                      train_embedding=True)),
        ("add_zh_drift", _run_cfg("le", "add_zh_drift", steps, [LATER], "MLA, zh added later (embedding trained)",
                                  tests=("en", *LANGS), init_from=drift, train_embedding=True)),
    ]


def run_all(demo_dir: Path, steps: dict) -> dict[str, float]:
    """Train and evaluate every planned run that has no ``model_final.pt`` yet; returns seconds per run."""
    import train_mla

    cfg_dir = demo_dir / "mla" / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    times = {}
    for name, cfg in plan(steps):
        if (demo_dir / "mla" / name / "model_final.pt").exists():
            continue
        path = cfg_dir / f"{name}.json"
        path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
        start = time.perf_counter()
        train_mla.main(["--config", str(path)])
        times[name] = time.perf_counter() - start
        print(f"[mla] {name}: {times[name]:.1f}s", flush=True)
    return times


# ------------------------------------------------------------------------------------------ checks and report
def _scores(run_dir: Path, lang: str):
    import numpy as np

    with np.load(run_dir / "results" / f"scores_demo_{lang}_test.npz", allow_pickle=False) as saved:
        return saved["scores"]


def _same_scores(a: Path, b: Path, lang: str) -> dict[str, Any]:
    """Bitwise equality of two runs' score matrices on one test set, and their largest difference."""
    import numpy as np

    x, y = _scores(a, lang), _scores(b, lang)
    return {"bitwise_equal": bool(np.array_equal(x, y)), "max_abs_diff": float(np.abs(x - y).max())}


def _native_frozen(mla_dir: Path, run: str) -> bool:
    """Every ``native.*`` tensor of ``run``'s last checkpoint equals the native model file, bit for bit."""
    import torch

    from model.weights import read_state_file

    native = read_state_file(mla_dir / "native" / "model_final.pt")
    ckpt = sorted((mla_dir / run / "ckpt").glob("model_step_*.pt"))[-1]
    state = read_state_file(ckpt)
    return all(torch.equal(state[f"native.{k}"], v) for k, v in native.items())


def checks(mla_dir: Path) -> dict[str, Any]:
    """The section's invariants, measured on the runs' saved test scores and checkpoints."""
    runs = ["nlt", "nlt_le", "le_only", "no_acquirers", "random_embedding", "four", "add_zh", "add_zh_drift"]
    return {
        "english_scores_equal_native": {r: _same_scores(mla_dir / "native", mla_dir / r, "en") for r in runs},
        "native_weights_unchanged": {r: _native_frozen(mla_dir, r) for r in ("nlt_le", "add_zh", "add_zh_drift")},
        "after_adding_zh_embedding_frozen": {x: _same_scores(mla_dir / "four", mla_dir / "add_zh", x)
                                             for x in FIRST_FOUR},
        "after_adding_zh_embedding_trained": {x: _same_scores(mla_dir / "four", mla_dir / "add_zh_drift", x)
                                              for x in FIRST_FOUR},
    }


def mla_results(mla_dir: Path) -> list[dict]:
    """The per-language rows of every tested run (results.json 'detail'), under their settings."""
    rows = []
    for name, _ in plan(PROFILES["quick"]):
        path = mla_dir / name / "results" / "results.json"
        if path.is_file():
            for row in json.loads(path.read_text(encoding="utf-8"))["detail"]:
                metrics = {k: v for k, v in row.items() if k not in ("setting", "dataset", "lang")}
                rows.append({"setting": row["setting"], "dataset": row["dataset"], "lang": row["lang"],
                             "metrics": metrics})
    return rows


def render(rows: list[dict], found: dict[str, Any], times: dict[str, float]) -> str:
    from evaluation.results_table import demo_markdown

    ok = lambda d: all(v["bitwise_equal"] for v in d.values())  # noqa: E731
    drift = max(v["max_abs_diff"] for v in found["after_adding_zh_embedding_trained"].values())
    lines = ["# MLA demo: language acquirers on a frozen English dual encoder", "",
             "Same test splits, same AR code and table as UC2's rows (evaluation.retrieval_metrics / results_table).",
             "", demo_markdown(rows, "demo"), "", "## Checks (bitwise)", "",
             f"- English test scores of every MLA run equal the native model's: "
             f"{ok(found['english_scores_equal_native'])}",
             f"- Native weights in the MLA checkpoints equal the native model file: "
             f"{all(found['native_weights_unchanged'].values())}",
             f"- de/fr/cs/ja scores unchanged after adding zh with the shared embedding frozen: "
             f"{ok(found['after_adding_zh_embedding_frozen'])}",
             f"- ... with the shared embedding trained (MLA's own extension mode): largest score change {drift:.3g}",
             ""]
    if times:
        lines += ["## Run times (s)", "", *(f"- {k}: {v:.0f}" for k, v in times.items()),
                  f"- total: {sum(times.values()):.0f}", ""]
    return "\n".join(lines)


def report(demo_dir: Path, out: Path, times: dict[str, float]) -> str:
    """Write ``out/mla_report.md`` and ``.json`` (MLA rows, UC2's demo rows when present, chance)."""
    from scripts.demo_report import chance_rows, retrieval_results
    from utils.atomic import atomic_write_json

    mla_dir = demo_dir / "mla"
    rows = mla_results(mla_dir) + retrieval_results(demo_dir)
    rows += chance_rows(demo_dir, runs=("mla/nlt_le",))
    found = checks(mla_dir)
    text = render(rows, found, times)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mla_report.md.tmp").write_text(text, encoding="utf-8")
    (out / "mla_report.md.tmp").replace(out / "mla_report.md")
    atomic_write_json({"retrieval": rows, "checks": found, "run_seconds": times}, out / "mla_report.json")
    atomic_write_json({"retrieval": rows, "checks": found, "run_seconds": times}, mla_dir / "report.json")
    return text


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--demo_dir", type=Path, default=REPO_ROOT / "demo_run")
    p.add_argument("--results", type=Path, default=REPO_ROOT / "results" / "demo")
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the demo's models are tiny)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    demo_dir = args.demo_dir.resolve()
    os.environ["UC2_DEMO_DIR"] = str(demo_dir)
    times = run_all(demo_dir, PROFILES[args.profile])
    text = report(demo_dir, args.results.resolve(), times)
    print(text, flush=True)
    return text


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
