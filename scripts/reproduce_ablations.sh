#!/usr/bin/env bash
# UC2 pretraining ablations in miniature, on the generated demo corpus:
#   paper table 3: full model, -VTLM, -MRTM, -VTLM-MRTM        (variants full no_vtlm no_mrtm no_vtlm_mrtm)
#   paper table 5: MRTM against MRC as the region objective     (variants full mrc)
# For every variant and seed: pretrain.py (the base pretraining config with the variant's task lists as
# overrides), train_itm.py fine-tuning (all-language by default; final weights, no validation) with its
# test-set evaluation, and with --zero-shot also inf_itm.py with the pretrained ITM head. Test sets are the
# demo's, limited to --eval-langs (scoring every caption against every image dominates the run time).
# Then a small Python step writes OUT/ablations.md and OUT/ablations.json:
# AR per language and the mean, as mean +- sample standard deviation over the seeds, and each variant's
# difference to the full model against the seed spread.
#
# Usage: scripts/reproduce_ablations.sh [--out DIR] [--seeds "1 2"] [--variants "full no_vtlm ..."]
#            [--settings "all_lang en_only"] [--eval-langs "en de ja"] [--pretrain-steps N] [--finetune-steps N]
#            [--zero-shot] [--dry-run] [--summary-only]
# Defaults (2 seeds, 300 + 300 steps, en de ja): about 7 minutes on 2 cores; --pretrain-steps 1200: 20 minutes.
# Environment: PYTHON (default .venv/bin/python), UC2_DEMO_DIR (demo corpus root, default demo_run/),
#   PRETRAIN_CONFIG (default config/demo_pretrain.json), MRC_TASK (mrc or mrc-kl, default mrc).
# Needs the demo's corpus, XLM-R stand-in and Early Adaptation weights under UC2_DEMO_DIR: when one is
# missing, scripts/run_demo.py (the README's first command) is run once first.
# Stages whose output exists are skipped, so an interrupted run can simply be started again.
# --summary-only rebuilds the tables from OUT/runs (pass the same step counts: they label the tables).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=$(command -v python3)
export UC2_DEMO_DIR=${UC2_DEMO_DIR:-$REPO/demo_run}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PRETRAIN_CONFIG=${PRETRAIN_CONFIG:-$REPO/config/demo_pretrain.json}
MRC_TASK=${MRC_TASK:-mrc}

OUT=$REPO/results/ablations
SEEDS="1 2"
VARIANTS="full no_vtlm no_mrtm no_vtlm_mrtm mrc"
SETTINGS="all_lang"
EVAL_LANGS="en de ja"
PRETRAIN_STEPS=300
FINETUNE_STEPS=300
ZERO_SHOT=0
DRY_RUN=0
SUMMARY_ONLY=0

usage() {  # the comment block at the top of this file
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

die() {
    echo "reproduce_ablations.sh: $*" >&2
    exit 2
}

parse_args() {
    while [ "$#" -gt 0 ]; do
        case "$1" in
            --out) OUT=$2; shift ;;
            --seeds) SEEDS=$2; shift ;;
            --variants) VARIANTS=$2; shift ;;
            --settings) SETTINGS=$2; shift ;;
            --eval-langs) EVAL_LANGS=$2; shift ;;
            --zero-shot) ZERO_SHOT=1 ;;
            --pretrain-steps) PRETRAIN_STEPS=$2; shift ;;
            --finetune-steps) FINETUNE_STEPS=$2; shift ;;
            --dry-run) DRY_RUN=1 ;;
            --summary-only) SUMMARY_ONLY=1 ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown argument '$1' (see --help)" ;;
        esac
        shift
    done
    case "$PRETRAIN_STEPS$FINETUNE_STEPS" in
        *[!0-9]*|"") die "--pretrain-steps and --finetune-steps take positive integers" ;;
    esac
    for variant in $VARIANTS; do
        case "$variant" in
            full|no_vtlm|no_mrtm|no_vtlm_mrtm|mrc) ;;
            *) die "unknown variant '$variant'; known: full no_vtlm no_mrtm no_vtlm_mrtm mrc" ;;
        esac
    done
    for setting in $SETTINGS; do
        [ -f "$REPO/config/itm_demo_${setting}.json" ] \
            || die "unknown setting '$setting': no config/itm_demo_${setting}.json (use all_lang, en_only)"
    done
}

# Print a command; run it unless --dry-run. Each stage prints one line with its wall time.
run() {
    local name=$1
    shift
    if [ "$DRY_RUN" -eq 1 ]; then
        printf '%q ' "$@"
        printf '\n'
        return 0
    fi
    local start=$SECONDS
    echo "[ablations] $name ..."
    "$@"
    echo "[ablations] $name: done in $((SECONDS - start))s"
}

# The Python helper: task-list overrides per variant, test-set overrides, and the summary table.
helper() {
    "$PYTHON" - "$@" <<'PY'
import json, math, os, re, sys, tempfile
from pathlib import Path

VTLM, MRTM = {"vtlm", "tlm"}, {"mrtm", "vmlm"}


def fail(msg):
    sys.exit(f"reproduce_ablations.sh: {msg}")


def load(path):
    """A config's JSON with ${NAME} replaced from the environment: the config loader expands the file's
    values but not command-line overrides, and these lists travel as overrides."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        fail(f"cannot read config {path}: {exc}")

    def expand(value):
        if isinstance(value, dict):
            return {k: expand(v) for k, v in value.items()}
        if isinstance(value, list):
            return [expand(v) for v in value]
        if isinstance(value, str):
            for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value):
                if name not in os.environ:
                    fail(f"{path}: uses ${{{name}}} but the environment variable {name} is not set")
                value = value.replace("${" + name + "}", os.environ[name])
        return value

    return expand(data)


def variant_specs(specs, variant, mrc_task, where):
    """Drop (or, for mrc, replace) the variant's objectives in each dataset's task list; empty sets go."""
    drop = {"full": set(), "no_vtlm": VTLM, "no_mrtm": MRTM, "no_vtlm_mrtm": VTLM | MRTM, "mrc": set()}[variant]
    out, changed = [], False
    for spec in specs:
        tasks, ratios = spec.get("tasks", []), spec.get("mix_ratio") or [None] * len(spec.get("tasks", []))
        kept = [(mrc_task if variant == "mrc" and t in MRTM else t, r) for t, r in zip(tasks, ratios) if t not in drop]
        changed |= len(kept) != len(tasks) or any(k != t for (k, _), t in zip(kept, tasks))
        if kept:
            new = dict(spec, tasks=[t for t, _ in kept])
            if spec.get("mix_ratio"):
                new["mix_ratio"] = [r for _, r in kept]
            out.append(new)
    if variant != "full" and not changed and specs:
        fail(f"{where}: variant {variant} changes no task (tasks: {sorted({t for s in specs for t in s.get('tasks', [])})})")
    return out


def cmd_tasks(variant, config, mrc_task):
    cfg = load(config)
    for key in ("train_datasets", "val_datasets"):
        specs = variant_specs(cfg.get(key, []), variant, mrc_task, f"{config}: {key}")
        if key == "train_datasets" and not specs:
            fail(f"{config}: train_datasets: variant {variant} leaves no training task")
        print(f"--{key}\n{json.dumps(specs, ensure_ascii=False)}")


def cmd_testsets(config, langs):
    cfg = load(config)
    langs = langs.split()
    sets = [spec for spec in cfg.get("test_datasets", []) if spec.get("lang") in langs]
    if not sets:
        have = [spec.get("lang") for spec in cfg.get("test_datasets", [])]
        fail(f"{config}: test_datasets: no test set for languages {langs} (the config has {have})")
    print(f"--test_datasets\n{json.dumps(sets, ensure_ascii=False)}")
    for key in ("conf_th", "max_bb", "min_bb"):  # the same region rule as fine-tuning
        if key in cfg:
            print(f"--{key}\n{cfg[key]}")


def ar_by_lang(path):
    if not path.is_file():
        return None
    rows = json.loads(path.read_text(encoding="utf-8")).get("detail", [])
    return {r["lang"]: float(r["r_mean"]) for r in rows if isinstance(r.get("r_mean"), (int, float))}


def stats(values):
    if not values:
        return None, None
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, sd


def fmt(mean, sd):
    if mean is None:
        return "-"
    return f"{mean:.1f}" if sd is None else f"{mean:.1f} ± {sd:.1f}"


LABEL = {"full": "UC2 (MLM+ITM+MRTM+VTLM)", "no_vtlm": "−VTLM", "no_mrtm": "−MRTM",
         "no_vtlm_mrtm": "−VTLM −MRTM", "mrc": "MRC instead of MRTM (MLM+ITM+MRC+VTLM)"}


def collect(out, variant, seeds, stage):
    """{"langs": {lang: [AR per seed]}, "mean": [mean AR per seed]} of one variant, from each seed's
    ``runs/VARIANT/seedS/STAGE`` results.json (seeds without one are left out)."""
    langs, means = {}, []
    for s in seeds:
        ar = ar_by_lang(out / "runs" / variant / f"seed{s}" / stage)
        if ar:
            for lang, value in ar.items():
                langs.setdefault(lang, []).append(value)
            means.append(sum(ar.values()) / len(ar))
    return {"langs": langs, "mean": means}


def delta_cell(runs, full):
    """Mean difference to the full model, with 2 standard errors of that difference when both sides have
    2+ seeds; '(noise)' when the difference is inside them."""
    mean, sd = stats(runs)
    full_mean, full_sd = stats(full)
    if mean is None or full_mean is None:
        return "-"
    delta = mean - full_mean
    if sd is None or full_sd is None:
        return f"{delta:+.1f} (1 seed: no spread)"
    two_se = 2 * math.sqrt(sd ** 2 / len(runs) + full_sd ** 2 / len(full))
    return f"{delta:+.1f} ± {two_se:.1f}" + (" (noise)" if abs(delta) <= two_se else "")


def table(data, variants, title):
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


def cmd_summary(out, variants, seeds, settings, pretrain_steps, finetune_steps):
    out, variants, seeds, settings = Path(out), variants.split(), seeds.split(), settings.split()
    steps = (int(pretrain_steps), int(finetune_steps))
    stages = [(f"itm_{s}/results/results.json", f"fine-tuned ({s.replace('_', '-')})") for s in settings]
    stages.append(("zeroshot/results.json", "zero-shot, ITM head"))
    parts = ["# UC2 ablations in miniature (demo corpus)", "",
             f"Pretraining {steps[0]} steps, retrieval fine-tuning {steps[1]} steps; seeds {', '.join(seeds)}. "
             "Cells: test AR (mean of R@1/5/10 in both directions), mean ± sample standard deviation over "
             "the seeds. A difference within 2 standard errors is marked (noise): not evidence either way. "
             "The corpus is generated and the models tiny: these tables show the direction of each "
             "objective's effect at this scale, not the paper's magnitudes.", ""]
    blob = {"pretrain_steps": steps[0], "finetune_steps": steps[1], "seeds": seeds, "tables": {}}
    t3 = [v for v in ("full", "no_vtlm", "no_mrtm", "no_vtlm_mrtm") if v in variants]
    t5 = [v for v in ("full", "mrc") if v in variants]
    for stage, name in stages:
        data = {v: collect(out, v, seeds, stage) for v in variants}
        blob["tables"][name] = data
        if not any(d["mean"] for d in data.values()):
            if not stage.startswith("zeroshot"):  # zero-shot is optional (--zero-shot): absent unless run
                parts.append(f"### {name}\n\nNo results yet (expected runs/VARIANT/seedS/{stage}).\n")
            continue
        if len(t3) > 1:
            parts.append(table(data, t3, f"Paper table 3 in miniature: objectives, {name}"))
        if len(t5) > 1:
            parts.append(table(data, t5, f"Paper table 5 in miniature: MRTM vs MRC, {name}"))
    write(out / "ablations.md", "\n".join(parts))
    write(out / "ablations.json", json.dumps(blob, indent=2, ensure_ascii=False) + "\n")
    print("\n".join(parts))


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


COMMANDS = {"tasks": cmd_tasks, "testsets": cmd_testsets, "summary": cmd_summary}
if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    fail(f"helper: expected one of {sorted(COMMANDS)}, got {sys.argv[1:2]}")
COMMANDS[sys.argv[1]](*sys.argv[2:])
PY
}

# The inputs config/demo_pretrain.json names besides the run itself, as scripts/run_demo.py makes them.
# Every variant starts from the demo's shared English-ITM warm-up (see README: without it a tiny model
# from the monolingual stand-in stays on the ITM plateau), so the variants differ only in the mix after it.
prepare_demo() {
    local marker
    for marker in data/stats.json xlmr/config.json early_adaptation.pt pretrain_warmup/model_final.pt; do
        if [ ! -e "$UC2_DEMO_DIR/$marker" ]; then
            run "demo (prepares the inputs; $marker missing)" "$PYTHON" "$REPO/scripts/run_demo.py" \
                --demo_dir "$UC2_DEMO_DIR"
            return 0
        fi
    done
}

# One variant and seed: pretrain, zero-shot evaluation (--zero-shot), fine-tuning + test evaluation per setting.
run_one() {
    local variant=$1 seed=$2
    local dir="$OUT/runs/$variant/seed$seed"
    local pre="$dir/pretrain"
    local ckpt="$pre/model_final.pt"  # written by pretrain.py at the end, UC2 key names
    local -a task_args test_args
    local lines
    lines=$(helper tasks "$variant" "$PRETRAIN_CONFIG" "$MRC_TASK")  # one argument per line
    mapfile -t task_args <<< "$lines"
    if [ ! -f "$ckpt" ]; then
        run "$variant seed $seed: pretrain" "$PYTHON" "$REPO/pretrain.py" --config "$PRETRAIN_CONFIG" \
            --output_dir "$pre" --seed "$seed" --num_train_steps "$PRETRAIN_STEPS" \
            --warmup_steps "$((PRETRAIN_STEPS / 10))" --save_steps "$PRETRAIN_STEPS" --valid_steps 0 \
            --checkpoint "$UC2_DEMO_DIR/pretrain_warmup/model_final.pt" --early_adaptation null \
            "${task_args[@]}"
    fi
    lines=$(helper testsets "$REPO/config/itm_demo_all_lang.json" "$EVAL_LANGS")
    mapfile -t test_args <<< "$lines"
    if [ "$ZERO_SHOT" -eq 1 ] && [ ! -f "$dir/zeroshot/results.json" ]; then
        run "$variant seed $seed: zero-shot retrieval" "$PYTHON" "$REPO/inf_itm.py" --output_dir "$dir/zeroshot" \
            --checkpoint "$ckpt" --model_config "$pre/model.json" --head itm \
            --setting "zero-shot ($variant)" "${test_args[@]}"
    fi
    local setting
    for setting in $SETTINGS; do
        [ -f "$dir/itm_$setting/results/results.json" ] && continue
        run "$variant seed $seed: fine-tune $setting" "$PYTHON" "$REPO/train_itm.py" \
            --config "$REPO/config/itm_demo_${setting}.json" --output_dir "$dir/itm_$setting" \
            --checkpoint "$ckpt" --model_config "$pre/model.json" --seed "$seed" \
            --num_train_steps "$FINETUNE_STEPS" --warmup_steps "$((FINETUNE_STEPS / 10))" \
            --valid_steps 0 --save_steps "$FINETUNE_STEPS" "${test_args[@]}"
    done
}

main() {
    parse_args "$@"
    if [ "$SUMMARY_ONLY" -eq 0 ]; then
        [ -f "$PRETRAIN_CONFIG" ] || die "pretraining config $PRETRAIN_CONFIG not found (set PRETRAIN_CONFIG)"
        [ -f "$REPO/pretrain.py" ] || [ "$DRY_RUN" -eq 1 ] \
            || die "$REPO/pretrain.py not found: the pretraining entry point is needed"
        prepare_demo
        local variant seed
        for variant in $VARIANTS; do
            for seed in $SEEDS; do
                run_one "$variant" "$seed"
            done
        done
    fi
    [ "$DRY_RUN" -eq 1 ] && return 0
    helper summary "$OUT" "$VARIANTS" "$SEEDS" "$SETTINGS" "$PRETRAIN_STEPS" "$FINETUNE_STEPS"
}

main "$@"
