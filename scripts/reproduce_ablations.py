#!/usr/bin/env python
"""UC2 pretraining ablations in miniature, on the generated demo corpus.

    paper table 3: full model, -VTLM, -MRTM, -VTLM-MRTM        (variants full no_vtlm no_mrtm no_vtlm_mrtm)
    paper table 5: MRTM against MRC as the region objective     (variants full mrc)

For every variant and seed: ``pretrain.py`` (the base pretraining config, read and checked by the config
module, with the variant's task lists as overrides), ``train_itm.py`` fine-tuning (all-language by default;
final weights, no validation) with its test-set evaluation, and with ``--zero-shot`` also ``inf_itm.py``
with the pretrained ITM head. Test sets are the demo's, limited to ``--eval-langs`` (scoring every caption
against every image dominates the run time). Then OUT/ablations.md and OUT/ablations.json: AR per language
and the mean, as mean ± sample standard deviation over the seeds, and each variant's difference to the
full model against the seed spread.

    python scripts/reproduce_ablations.py [--out DIR] [--seeds "1 2"] [--variants "full no_vtlm ..."]
        [--settings "all_lang en_only"] [--eval-langs "en de ja"] [--pretrain-steps N] [--finetune-steps N]
        [--zero-shot] [--dry-run] [--summary-only]

(``scripts/reproduce_ablations.sh`` runs this with the repository's ``.venv``.) Defaults (2 seeds, 300 + 300
steps, en de ja): about 7 minutes on 2 cores; ``--pretrain-steps 1200``: 20 minutes. Environment:
UC2_DEMO_DIR (demo root, default demo_run/), PRETRAIN_CONFIG (default config/demo_pretrain.json), MRC_TASK
(mrc or mrc-kl, default mrc). Needs the demo's corpus, XLM-R stand-in, Early Adaptation weights and English
ITM warm-up under UC2_DEMO_DIR: when one is missing, scripts/run_demo.py is run once first. Stages whose
output exists are skipped, so an interrupted run can simply be started again. ``--summary-only`` rebuilds
the tables from OUT/runs (pass the same step counts: they label the tables).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from utils.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("full", "no_vtlm", "no_mrtm", "no_vtlm_mrtm", "mrc")
VTLM, MRTM = {"vtlm", "tlm"}, {"mrtm", "vmlm"}
DROP = {"full": set(), "no_vtlm": VTLM, "no_mrtm": MRTM, "no_vtlm_mrtm": VTLM | MRTM, "mrc": set()}
LABEL = {"full": "UC2 (MLM+ITM+MRTM+VTLM)", "no_vtlm": "−VTLM", "no_mrtm": "−MRTM",
         "no_vtlm_mrtm": "−VTLM −MRTM", "mrc": "MRC instead of MRTM (MLM+ITM+MRC+VTLM)"}
# What scripts/run_demo.py leaves under UC2_DEMO_DIR that every variant starts from (the shared English-ITM
# warm-up included: without it a tiny model from the monolingual stand-in stays on the ITM plateau).
DEMO_MARKERS = ("data/stats.json", "xlmr/config.json", "early_adaptation.pt", "pretrain_warmup/model_final.pt")


class AblationError(ConfigError):  # run_cli prints it as one "error: ..." line
    """A bad option, variant or config for the ablation run."""


# ----------------------------------------------------------------------------------------------------------
# variants as config edits
# ----------------------------------------------------------------------------------------------------------
def variant_specs(specs: Sequence[Any], variant: str, mrc_task: str, where: str) -> list[Any]:
    """The dataset specs with the variant's objectives dropped (or, for ``mrc``, MRTM replaced by
    ``mrc_task``); a spec left without tasks goes. A variant that changes nothing is an error."""
    out, changed = [], False
    for spec in specs:
        ratios = spec.mix_ratio or [None] * len(spec.tasks)
        kept = [(mrc_task if variant == "mrc" and t in MRTM else t, r)
                for t, r in zip(spec.tasks, ratios) if t not in DROP[variant]]
        changed |= [t for t, _ in kept] != list(spec.tasks)
        if kept:
            out.append(dataclasses.replace(spec, tasks=[t for t, _ in kept],
                                           mix_ratio=[r for _, r in kept] if spec.mix_ratio else []))
    if variant != "full" and not changed and specs:
        raise AblationError(f"{where}: variant {variant} changes no task "
                            f"(tasks: {sorted({t for s in specs for t in s.tasks})})")
    return out


def task_overrides(variant: str, config: Path, mrc_task: str) -> list[str]:
    """``--train_datasets JSON --val_datasets JSON`` of the variant, from the pretraining config (loaded
    by the config module, so ``${UC2_DEMO_DIR}`` is expanded before the lists travel as overrides)."""
    from utils.config import load_config, to_dict
    from training.run_config import PretrainConfig

    cfg = load_config(PretrainConfig, config)
    args = []
    for key in ("train_datasets", "val_datasets"):
        specs = variant_specs(getattr(cfg, key), variant, mrc_task, f"{config}: {key}")
        if key == "train_datasets" and not specs:
            raise AblationError(f"{config}: train_datasets: variant {variant} leaves no training task")
        args += [f"--{key}", json.dumps([to_dict(s) for s in specs], ensure_ascii=False)]
    return args


def test_overrides(config: Path, langs: Sequence[str]) -> list[str]:
    """The fine-tuning config's test sets in ``langs`` and its region rule, as overrides."""
    from utils.config import load_config, to_dict
    from training.itm_config import RetrievalConfig

    cfg = load_config(RetrievalConfig, config)
    sets = [to_dict(s) for s in cfg.test_datasets if s.lang in langs]
    if not sets:
        raise AblationError(f"{config}: test_datasets: no test set for languages {list(langs)} "
                            f"(the config has {[s.lang for s in cfg.test_datasets]})")
    args = ["--test_datasets", json.dumps(sets, ensure_ascii=False)]
    for key in ("conf_th", "max_bb", "min_bb"):  # the same region rule as fine-tuning
        args += [f"--{key}", str(getattr(cfg, key))]
    return args


# ----------------------------------------------------------------------------------------------------------
# running the stages
# ----------------------------------------------------------------------------------------------------------
def run(name: str, cmd: Sequence[str], dry_run: bool) -> None:
    """Print the command (``--dry-run``) or run it with one line and its wall time per stage."""
    if dry_run:
        print(shlex.join(cmd))
        return
    start = time.monotonic()
    print(f"[ablations] {name} ...", flush=True)
    code = subprocess.run(list(cmd), check=False).returncode
    if code != 0:
        raise SystemExit(f"reproduce_ablations: {name} failed with exit status {code}")
    print(f"[ablations] {name}: done in {time.monotonic() - start:.0f}s", flush=True)


def prepare_demo(demo_dir: Path, dry_run: bool) -> None:
    """Run the demo once when one of the inputs the variants start from is missing."""
    missing = [m for m in DEMO_MARKERS if not (demo_dir / m).exists()]
    if missing:
        run(f"demo (prepares the inputs; {missing[0]} missing)",
            [sys.executable, str(REPO_ROOT / "scripts" / "run_demo.py"), "--demo_dir", str(demo_dir)], dry_run)


def pretrain_cmd(args: argparse.Namespace, variant: str, seed: str, pre: Path, demo_dir: Path) -> list[str]:
    steps = args.pretrain_steps
    return [sys.executable, str(REPO_ROOT / "pretrain.py"), "--config", str(args.pretrain_config),
            "--output_dir", str(pre), "--seed", seed, "--num_train_steps", str(steps),
            "--warmup_steps", str(steps // 10), "--save_steps", str(steps), "--valid_steps", "0",
            "--checkpoint", str(demo_dir / "pretrain_warmup" / "model_final.pt"), "--early_adaptation", "null",
            *task_overrides(variant, args.pretrain_config, args.mrc_task)]


def finetune_cmd(args: argparse.Namespace, setting: str, seed: str, run_dir: Path, pre: Path,
                 tests: list[str]) -> list[str]:
    steps = args.finetune_steps
    return [sys.executable, str(REPO_ROOT / "train_itm.py"), "--config",
            str(REPO_ROOT / "config" / f"itm_demo_{setting}.json"), "--output_dir", str(run_dir),
            "--checkpoint", str(pre / "model_final.pt"), "--model_config", str(pre / "model.json"),
            "--seed", seed, "--num_train_steps", str(steps), "--warmup_steps", str(steps // 10),
            "--valid_steps", "0", "--save_steps", str(steps), *tests]


def run_one(args: argparse.Namespace, variant: str, seed: str, demo_dir: Path) -> None:
    """One variant and seed: pretrain, zero-shot evaluation (--zero-shot), fine-tune + test per setting."""
    base = args.out / "runs" / variant / f"seed{seed}"
    pre = base / "pretrain"
    if not (pre / "model_final.pt").is_file():  # written by pretrain.py at the end, UC2 key names
        run(f"{variant} seed {seed}: pretrain", pretrain_cmd(args, variant, seed, pre, demo_dir), args.dry_run)
    tests = test_overrides(REPO_ROOT / "config" / "itm_demo_all_lang.json", args.eval_langs)
    if args.zero_shot and not (base / "zeroshot" / "results.json").is_file():
        run(f"{variant} seed {seed}: zero-shot retrieval",
            [sys.executable, str(REPO_ROOT / "inf_itm.py"), "--output_dir", str(base / "zeroshot"),
             "--checkpoint", str(pre / "model_final.pt"), "--model_config", str(pre / "model.json"),
             "--head", "itm", "--setting", f"zero-shot ({variant})", *tests], args.dry_run)
    for setting in args.settings:
        if not (base / f"itm_{setting}" / "results" / "results.json").is_file():
            run(f"{variant} seed {seed}: fine-tune {setting}",
                finetune_cmd(args, setting, seed, base / f"itm_{setting}", pre, tests), args.dry_run)


# ----------------------------------------------------------------------------------------------------------
# the summary tables
# ----------------------------------------------------------------------------------------------------------
def ar_by_lang(path: Path) -> dict[str, float] | None:
    if not path.is_file():
        return None
    rows = json.loads(path.read_text(encoding="utf-8")).get("detail", [])
    return {r["lang"]: float(r["r_mean"]) for r in rows if isinstance(r.get("r_mean"), (int, float))}


def stats(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, sd


def fmt(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.1f}" if sd is None else f"{mean:.1f} ± {sd:.1f}"


def collect(out: Path, variant: str, seeds: Sequence[str], stage: str) -> dict[str, Any]:
    """``{"langs": {lang: [AR per seed]}, "mean": [mean AR per seed]}`` of one variant, from each seed's
    ``runs/VARIANT/seedS/STAGE`` results.json (seeds without one are left out)."""
    langs: dict[str, list[float]] = {}
    means = []
    for seed in seeds:
        ar = ar_by_lang(out / "runs" / variant / f"seed{seed}" / stage)
        if ar:
            for lang, value in ar.items():
                langs.setdefault(lang, []).append(value)
            means.append(sum(ar.values()) / len(ar))
    return {"langs": langs, "mean": means}


def delta_cell(runs: Sequence[float], full: Sequence[float]) -> str:
    """Mean difference to the full model, with 2 standard errors of that difference when both sides have
    2+ seeds; '(noise)' when the difference is inside them."""
    (mean, sd), (full_mean, full_sd) = stats(runs), stats(full)
    if mean is None or full_mean is None:
        return "-"
    delta = mean - full_mean
    if sd is None or full_sd is None:
        return f"{delta:+.1f} (1 seed: no spread)"
    two_se = 2 * math.sqrt(sd ** 2 / len(runs) + full_sd ** 2 / len(full))
    return f"{delta:+.1f} ± {two_se:.1f}" + (" (noise)" if abs(delta) <= two_se else "")


def table(data: dict[str, dict], variants: Sequence[str], title: str) -> str:
    langs = list(dict.fromkeys(lang for v in variants for lang in data[v]["langs"]))
    full = data.get("full", {}).get("mean", [])
    head = ["Model", *langs, "Mean", "Δ Mean vs full (± 2 SE)", "seeds"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in variants:
        cells = [fmt(*stats(data[v]["langs"].get(lang, []))) for lang in langs]
        delta = "-" if v == "full" else delta_cell(data[v]["mean"], full)
        lines.append("| " + " | ".join([LABEL[v], *cells, fmt(*stats(data[v]["mean"])), delta,
                                        str(len(data[v]["mean"]))]) + " |")
    return "\n".join(lines) + "\n"


def summary_header(args: argparse.Namespace) -> list[str]:
    return ["# UC2 ablations in miniature (demo corpus)", "",
            f"Pretraining {args.pretrain_steps} steps, retrieval fine-tuning {args.finetune_steps} steps; seeds "
            f"{', '.join(args.seeds)}. Cells: test AR (mean of R@1/5/10 in both directions), mean ± sample "
            "standard deviation over the seeds. A difference within 2 standard errors is marked (noise): not "
            "evidence either way. The corpus is generated and the models tiny: these tables show the "
            "direction of each objective's effect at this scale, not the paper's magnitudes.", ""]


def summary(args: argparse.Namespace) -> str:
    """Write OUT/ablations.md and OUT/ablations.json from the runs found; returns the Markdown."""
    from utils.atomic import atomic_write_text

    stages = [(f"itm_{s}/results/results.json", f"fine-tuned ({s.replace('_', '-')})") for s in args.settings]
    stages.append(("zeroshot/results.json", "zero-shot, ITM head"))
    parts = summary_header(args)
    blob: dict[str, Any] = {"pretrain_steps": args.pretrain_steps, "finetune_steps": args.finetune_steps,
                            "seeds": args.seeds, "tables": {}}
    t3 = [v for v in ("full", "no_vtlm", "no_mrtm", "no_vtlm_mrtm") if v in args.variants]
    t5 = [v for v in ("full", "mrc") if v in args.variants]
    for stage, name in stages:
        data = {v: collect(args.out, v, args.seeds, stage) for v in args.variants}
        blob["tables"][name] = data
        if not any(d["mean"] for d in data.values()):
            if not stage.startswith("zeroshot"):  # zero-shot is optional (--zero-shot): absent unless run
                parts.append(f"### {name}\n\nNo results yet (expected runs/VARIANT/seedS/{stage}).\n")
            continue
        if len(t3) > 1:
            parts.append(table(data, t3, f"Paper table 3 in miniature: objectives, {name}"))
        if len(t5) > 1:
            parts.append(table(data, t5, f"Paper table 5 in miniature: MRTM vs MRC, {name}"))
    markdown = "\n".join(parts)
    atomic_write_text(args.out / "ablations.md", markdown)
    atomic_write_text(args.out / "ablations.json", json.dumps(blob, indent=2, ensure_ascii=False) + "\n")
    return markdown


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "ablations", help="output folder")
    p.add_argument("--seeds", default="1 2", help="space-separated seeds")
    p.add_argument("--variants", default=" ".join(VARIANTS), help=f"space-separated, of {' '.join(VARIANTS)}")
    p.add_argument("--settings", default="all_lang", help="fine-tuning settings (config/itm_demo_SETTING.json)")
    p.add_argument("--eval-langs", dest="eval_langs", default="en de ja", help="test-set languages")
    p.add_argument("--pretrain-steps", dest="pretrain_steps", type=int, default=300)
    p.add_argument("--finetune-steps", dest="finetune_steps", type=int, default=300)
    p.add_argument("--zero-shot", dest="zero_shot", action="store_true", help="also evaluate the ITM head")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="print the commands only")
    p.add_argument("--summary-only", dest="summary_only", action="store_true", help="only rebuild the tables")
    args = p.parse_args(argv)
    for key in ("seeds", "variants", "settings", "eval_langs"):
        setattr(args, key, getattr(args, key).split())
    try:
        check_args(args)
    except AblationError as exc:
        p.error(str(exc))
    args.pretrain_config = Path(os.environ.get("PRETRAIN_CONFIG", REPO_ROOT / "config" / "demo_pretrain.json"))
    args.mrc_task = os.environ.get("MRC_TASK", "mrc")
    return args


def check_args(args: argparse.Namespace) -> None:
    if args.pretrain_steps < 1 or args.finetune_steps < 1:
        raise AblationError("--pretrain-steps and --finetune-steps take positive integers")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise AblationError(f"unknown variant '{unknown[0]}'; known: {' '.join(VARIANTS)}")
    for setting in args.settings:
        if not (REPO_ROOT / "config" / f"itm_demo_{setting}.json").is_file():
            raise AblationError(f"unknown setting '{setting}': no config/itm_demo_{setting}.json "
                                "(use all_lang, en_only)")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    demo_dir = Path(os.environ.setdefault("UC2_DEMO_DIR", str(REPO_ROOT / "demo_run")))
    os.environ.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")  # for the stages run below
    if not args.summary_only:
        if not args.pretrain_config.is_file():
            raise AblationError(f"pretraining config {args.pretrain_config} not found (set PRETRAIN_CONFIG)")
        prepare_demo(demo_dir, args.dry_run)
        for variant in args.variants:
            for seed in args.seeds:
                run_one(args, variant, seed, demo_dir)
    if not args.dry_run:
        print(summary(args))


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
