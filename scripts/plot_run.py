#!/usr/bin/env python
"""PNG plots of a training run and of an evaluation result.

    python scripts/plot_run.py RUN_DIR [--out DIR] [--source auto|tb|log] [--results FILE]

From the run's scalars (TensorBoard event files under ``RUN_DIR/tb/``, written by ``utils.logger.RunLogger``;
or, without them, the ``step N: ...`` / ``validation at step N: ...`` lines of ``RUN_DIR/log.txt``):
* ``loss.png``: ``loss/<task>`` over optimizer steps, one line per task;
* ``validation.png``: ``val/<task>/<metric>`` over steps, one panel per task;
* ``lr.png``: the learning rate over steps.
From an evaluation result (``results.json`` of ``evaluation.results_table.write_tables``: ``RUN_DIR/results.json``,
``RUN_DIR/results/results.json`` or ``--results FILE``; RUN_DIR may also be that file itself):
* ``ar_by_lang.png``: AR per language, one bar per setting;
* ``vqa.png``: VQA score / accuracy against the majority baseline, when the result has VQA rows.

PNGs go to ``--out`` (default ``RUN_DIR/plots``), each written to a temporary file and renamed, so a reader
never sees half a picture. A run whose steps were logged twice (resumed from an earlier checkpoint) keeps
the value written last for each step.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import struct
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from utils.atomic import atomic_write
from utils.errors import DataError

# tag -> {step: value}; steps are optimizer steps
Series = dict[str, dict[int, float]]

_EVENT_GLOB = "events.out.tfevents.*"
_LOG_TRAIN = re.compile(r"(?:^|\s)step (\d+): (.*)$")
_LOG_VAL = re.compile(r"(?:^|\s)validation at step (\d+): (.*)$")
_KEY_VALUE = re.compile(r"(\S+?)=(\S+)")


# ----------------------------------------------------------------------------------------------------------
# Reading scalars
# ----------------------------------------------------------------------------------------------------------
def iter_event_records(path: Path):
    """Yield the payload bytes of each record of a TensorBoard event file (TFRecord framing).

    Framing per record: ``uint64 length, uint32 masked_crc(length), data, uint32 masked_crc(data)``.
    A record cut short at the end of the file (a run still writing, or killed mid-write) ends the file
    quietly; a checksum that does not match is a :class:`DataError` naming the file and byte offset.
    """
    from tensorboardX.record_writer import masked_crc32c  # the writer's own checksum

    data = path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if masked_crc32c(header) != header_crc:
            raise DataError(f"{path}: corrupt TensorBoard record at byte {pos} (length checksum mismatch); "
                            "expected an event file written by tensorboardX")
        end = pos + 12 + length + 4
        if end > len(data):
            return  # the last record is incomplete: keep what was fully written
        payload = data[pos + 12:pos + 12 + length]
        (data_crc,) = struct.unpack("<I", data[end - 4:end])
        if masked_crc32c(payload) != data_crc:
            raise DataError(f"{path}: corrupt TensorBoard record at byte {pos} (data checksum mismatch)")
        yield payload
        pos = end


def read_event_file(path: Path, series: Series, stamps: dict[tuple[str, int], float]) -> None:
    """Add the scalar values of one event file to ``series``; a step seen before is replaced only by a
    value written later (``stamps`` holds the wall time of the value kept per (tag, step))."""
    from google.protobuf.message import DecodeError
    from tensorboardX.proto.event_pb2 import Event

    for payload in iter_event_records(path):
        event = Event()
        try:
            event.ParseFromString(payload)
        except DecodeError as exc:
            raise DataError(f"{path}: a record is not a TensorBoard Event protobuf ({exc})") from exc
        if not event.HasField("summary"):
            continue
        for value in event.summary.value:
            if value.WhichOneof("value") != "simple_value":
                continue  # images, histograms, tensors: not scalars
            key = (value.tag, int(event.step))
            if event.wall_time >= stamps.get(key, -math.inf):
                stamps[key] = event.wall_time
                series.setdefault(value.tag, {})[int(event.step)] = float(value.simple_value)


def read_tensorboard(tb_dir: Path) -> Series:
    """All scalars of the event files under ``tb_dir`` (searched recursively), by tag and step."""
    series: Series = {}
    stamps: dict[tuple[str, int], float] = {}
    for path in sorted(tb_dir.rglob(_EVENT_GLOB)):
        read_event_file(path, series, stamps)
    return series


def _parse_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_log_text(log_path: Path) -> Series:
    """Scalars from the trainer's log lines: ``step N: loss/x=.. lr=..`` and ``validation at step N: t/m=..``
    (validation keys get the ``val/`` prefix, as in TensorBoard). Later lines win for a repeated step."""
    series: Series = {}
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read {log_path}: {exc.strerror}") from exc
    for line in lines:
        match, prefix = _LOG_VAL.search(line), "val/"
        if match is None:
            match, prefix = _LOG_TRAIN.search(line), ""
        if match is None:
            continue
        step = int(match.group(1))
        for key, raw in _KEY_VALUE.findall(match.group(2)):
            value = _parse_number(raw)
            if value is not None:
                series.setdefault(prefix + key, {})[step] = value
    return series


def read_run_scalars(run_dir: Path, source: str = "auto") -> tuple[Series, str]:
    """The run's scalars and where they came from (``tb`` or ``log``).

    ``auto`` prefers the TensorBoard files (full precision) and falls back to ``log.txt`` (4 digits).
    Returns ``({}, "")`` when the chosen source does not exist.
    """
    tb_dir, log_path = run_dir / "tb", run_dir / "log.txt"
    if source in ("auto", "tb") and tb_dir.is_dir():
        series = read_tensorboard(tb_dir)
        if series or source == "tb":
            return series, "tb"
    if source in ("auto", "log") and log_path.is_file():
        return read_log_text(log_path), "log"
    return {}, ""


# ----------------------------------------------------------------------------------------------------------
# Reading results.json
# ----------------------------------------------------------------------------------------------------------
def find_results(run_dir: Path) -> Path | None:
    """``results.json`` of an evaluation: RUN_DIR itself if it is the file, else the usual places."""
    if run_dir.is_file():
        return run_dir
    for candidate in (run_dir / "results.json", run_dir / "results" / "results.json"):
        if candidate.is_file():
            return candidate
    return None


def load_results(path: Path) -> dict[str, Any]:
    """Read and check a results.json (needs a ``detail`` and/or ``vqa`` list of row dicts)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'detail' / 'vqa' lists (evaluation.results_table)")
    for key in ("detail", "vqa"):
        rows = data.get(key, [])
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{path}: key '{key}' must be a list of row objects, got {type(rows).__name__}")
        for i, row in enumerate(rows):
            missing = [k for k in ("setting", "dataset", "lang") if k not in row]
            if missing:
                raise DataError(f"{path}: {key}[{i}] lacks {missing}; expected setting, dataset, lang")
    return data


def ar_table(detail: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str], dict[tuple[str, str], float]]:
    """(settings, cell labels, {(setting, label): AR}) from ``detail`` rows; a label is the language, or
    ``dataset lang`` when the result holds several datasets. Rows without AR are skipped."""
    datasets = {row["dataset"] for row in detail}
    values: dict[tuple[str, str], float] = {}
    for row in detail:
        if isinstance(row.get("r_mean"), (int, float)):
            label = row["lang"] if len(datasets) == 1 else f"{row['dataset']} {row['lang']}"
            values[(row["setting"], label)] = float(row["r_mean"])
    settings = list(dict.fromkeys(s for s, _ in values))
    labels = list(dict.fromkeys(lab for _, lab in values))
    return settings, labels, values


# ----------------------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------------------
def _pyplot():
    """matplotlib's pyplot on the Agg back end (files only, no display needed); imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Save a figure as PNG atomically (temporary file in the same folder, then renamed into place)."""
    try:
        return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110, bbox_inches="tight"))
    finally:
        _pyplot().close(fig)


def _plot_lines(ax, series: Series, tags: Sequence[str], strip: str) -> None:
    """One line per tag (label without the ``strip`` prefix), steps on x; past 10 lines the colours
    repeat with another dash pattern, so every line stays distinguishable."""
    cmap = _pyplot().get_cmap("tab10")
    for i, tag in enumerate(tags):
        steps = sorted(series[tag])
        ax.plot(steps, [series[tag][s] for s in steps], label=tag[len(strip):], color=cmap(i % 10),
                linestyle=("-", "--", ":", "-.")[(i // 10) % 4], marker="o" if len(steps) < 30 else None,
                markersize=3, linewidth=1.2)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)


def _panels(groups: Mapping[str, Sequence[str]], width: float = 5.5, height: float = 3.8):
    """A figure with one axes per group (up to 3 per row); unused axes hidden. Returns (fig, axes list)."""
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig, axes = _pyplot().subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    return fig, list(axes.flat)[:len(groups)]


def loss_groups(series: Series, max_single: int = 8) -> dict[str, list[str]]:
    """The ``loss/`` tags by panel: all in ``"all tasks"`` up to ``max_single`` tags, else by objective
    (the task name up to its first ``_``: ``loss/mlm_coco_en`` -> ``mlm``)."""
    tags = sorted(t for t in series if t.startswith("loss/"))
    groups: dict[str, list[str]] = defaultdict(list)
    for tag in tags:
        groups[tag[len("loss/"):].split("_", 1)[0] if len(tags) > max_single else "all tasks"].append(tag)
    return dict(groups)


def plot_losses(series: Series, out: Path) -> Path | None:
    """``loss.png``: training loss per task over steps (None when the run logged no loss).

    Up to 8 tasks share one panel; more (a pretraining mix such as MLM/ITM/MRTM on six caption sets and
    VTLM on five pairs) get one panel per objective, the task name's first ``_`` part (``mlm_coco_en``).
    """
    groups = loss_groups(series)
    if not groups:
        return None
    if len(groups) == 1:
        fig, axes = _pyplot().subplots(figsize=(9, 5))
        axes = [axes]
    else:
        fig, axes = _panels(groups)
    for ax, (objective, group_tags) in zip(axes, groups.items()):
        _plot_lines(ax, series, group_tags, "loss/")
        ax.set_ylabel("loss (window mean)")
        if len(groups) > 1:
            ax.set_title(objective, fontsize=10)
            ax.legend(fontsize=7, frameon=False)
        else:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.suptitle("Training loss per task")
    fig.tight_layout()
    return _save(fig, out / "loss.png")


def plot_validation(series: Series, out: Path) -> Path | None:
    """``validation.png``: one panel per task with its ``val/<task>/<metric>`` lines (None when none).

    Set sizes logged beside the metrics (``n_img``, ``n_txt``: names starting ``n_``) are left out: they
    are constant and would squash the metrics' scale.
    """
    by_task: dict[str, list[str]] = defaultdict(list)
    for tag in sorted(t for t in series if t.startswith("val/")):
        task, _, metric = tag[len("val/"):].partition("/")
        if not metric.startswith("n_"):
            by_task[task].append(tag)
    if not by_task:
        return None
    fig, axes = _panels(by_task)
    for ax, (task, tags) in zip(axes, by_task.items()):
        _plot_lines(ax, series, tags, f"val/{task}/")
        ax.set_title(task, fontsize=10)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    fig.suptitle("Validation metrics")
    fig.tight_layout()
    return _save(fig, out / "validation.png")


def plot_lr(series: Series, out: Path) -> Path | None:
    """``lr.png``: the learning rate over steps (None when the run logged none)."""
    if "lr" not in series:
        return None
    fig, ax = _pyplot().subplots(figsize=(7, 4))
    _plot_lines(ax, series, ["lr"], "")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return _save(fig, out / "lr.png")


def _grouped_bars(ax, groups: Sequence[str], series_names: Sequence[str],
                  value: Any, hatch_for: Mapping[str, str] | None = None) -> None:
    """Bars grouped by ``groups`` (x), one bar per name; ``value(name, group)`` -> float or None."""
    cmap = _pyplot().get_cmap("tab10")
    width = 0.8 / max(len(series_names), 1)
    for i, name in enumerate(series_names):
        xs, heights = [], []
        for j, group in enumerate(groups):
            v = value(name, group)
            if v is not None:
                xs.append(j - 0.4 + width * (i + 0.5))
                heights.append(v)
        bars = ax.bar(xs, heights, width, label=name, color=cmap(i % cmap.N),
                      hatch=(hatch_for or {}).get(name))
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(groups)), groups)
    ax.grid(True, axis="y", alpha=0.3)


def plot_ar(results: Mapping[str, Any], out: Path) -> Path | None:
    """``ar_by_lang.png``: AR per language (plus the mean), one bar per setting (None without AR rows)."""
    settings, labels, values = ar_table(results.get("detail", []))
    if not values:
        return None
    for s in settings:  # the per-setting mean over the cells it has, like the tables' Mean column
        cells = [v for (setting, _), v in values.items() if setting == s]
        values[(s, "mean")] = sum(cells) / len(cells)
    groups = [*labels, "mean"]
    fig, ax = _pyplot().subplots(figsize=(max(6.0, 1.1 * len(groups) * max(1, len(settings)) / 2 + 3), 4.5))
    _grouped_bars(ax, groups, settings, lambda s, g: values.get((s, g)))
    ax.set_ylim(0, 105)
    ax.set_ylabel("AR (mean of R@1/5/10, both directions)")
    ax.set_title("Retrieval: Average Recall per language")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, out / "ar_by_lang.png")


def plot_vqa(results: Mapping[str, Any], out: Path) -> Path | None:
    """``vqa.png``: VQA score and accuracy per (setting, lang) beside the majority baseline."""
    rows = [r for r in results.get("vqa", []) if not str(r["setting"]).startswith("UC2 paper")]
    metrics = [("vqa_score", "VQA score"), ("accuracy", "accuracy"),
               ("majority_vqa_score", "majority VQA score"), ("majority_accuracy", "majority accuracy")]
    metrics = [(k, name) for k, name in metrics if any(isinstance(r.get(k), (int, float)) for r in rows)]
    if not rows or not metrics:
        return None
    groups = [f"{r['setting']}\n{r['dataset']} {r['lang']}" for r in rows]
    by_group = dict(zip(groups, rows))
    names = [name for _, name in metrics]
    key_of = {name: k for k, name in metrics}

    def value(name: str, group: str) -> float | None:
        v = by_group[group].get(key_of[name])
        return float(v) if isinstance(v, (int, float)) else None

    fig, ax = _pyplot().subplots(figsize=(max(6.0, 2.2 * len(groups) + 2), 4.5))
    _grouped_bars(ax, groups, names, value, {n: "//" for n in names if n.startswith("majority")})
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    ax.set_title("VQA against the majority-answer baseline")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, out / "vqa.png")


# ----------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------
def plot_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, source: str = "auto",
             results_path: str | os.PathLike | None = None) -> list[Path]:
    """Write every plot the run's logs and result allow; returns the PNG paths written.

    Raises :class:`DataError` when ``run_dir`` does not exist, or holds no scalars and no results.json.
    """
    run = Path(run_dir)
    if not run.exists():
        raise DataError(f"run directory {run} does not exist")
    series, origin = read_run_scalars(run, source) if run.is_dir() else ({}, "")
    res_path = Path(results_path) if results_path is not None else find_results(run)
    if results_path is not None and not res_path.is_file():
        raise DataError(f"results file {res_path} does not exist")
    if not series and res_path is None:
        raise DataError(
            f"{run}: no logs to plot; expected TensorBoard files tb/{_EVENT_GLOB} or log.txt lines "
            f"'step N: loss/<task>=...' (source={source}), or an evaluation results.json")
    out = Path(out_dir) if out_dir is not None else (run if run.is_dir() else run.parent) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_losses(series, out), plot_validation(series, out), plot_lr(series, out)]
    if res_path is not None:
        results = load_results(res_path)
        written += [plot_ar(results, out), plot_vqa(results, out)]
    paths = [p for p in written if p is not None]
    if not paths:
        where = f"{origin} scalars of {run}" if origin else str(run)
        raise DataError(f"{where}: nothing to plot; expected loss/<task>, val/<task>/<metric> or lr scalars, "
                        "or results.json rows with r_mean / vqa metrics")
    return paths


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="run directory (tb/, log.txt, results/) or a results.json")
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default RUN_DIR/plots)")
    parser.add_argument("--source", choices=("auto", "tb", "log"), default="auto",
                        help="scalars from TensorBoard files, log.txt, or whichever exists (tb first)")
    parser.add_argument("--results", type=Path, default=None, help="results.json to plot (default: found)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        paths = plot_run(args.run_dir, args.out, args.source, args.results)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
