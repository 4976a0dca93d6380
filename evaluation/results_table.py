"""Result tables laid out like the UC2 paper, as Markdown and as JSON.

Input is a list of results, each ``(setting, dataset, lang, metrics)`` (a :class:`Result`, a 4-tuple or a
dict with those keys). ``metrics`` is the dict from :func:`evaluation.retrieval_metrics.retrieval_recalls`
(or a :func:`~evaluation.retrieval_metrics.coco_1k_folds` result, whose ``"mean"`` is used) for retrieval, or
from :mod:`evaluation.vqa_metrics` for VQA (keys ``vqa_score``, ``accuracy``, ``bleu``, ``majority_vqa_score``,
``majority_accuracy``; any may be absent).

Tables:
* table 1 (:func:`table1_markdown`): rows = settings, columns = Multi30K en/de/fr/cs, MSCOCO en/zh/ja,
  Meta-Ave; AR per cell with 1 decimal. Missing cells show ``-``. Meta-Ave is the mean of the cells
  present; when some of the 7 are missing it is marked ``*`` (not comparable with the paper's).
* detail (:func:`detail_markdown`): R@1/5/10 both directions and AR per (setting, dataset, lang).
* demo (:func:`demo_markdown`): one dataset, languages en de fr cs ja zh and their mean.
* VQA (:func:`vqa_markdown`): VQA score, accuracy, BLEU and majority baselines, 2 decimals.
The paper's numbers (UC2 paper table 1; VQA v2 test-dev, VG-VQA ja) can be added as rows named
``UC2 paper...`` (``include_paper=True``). Numbers are rounded half up (87.25 -> 87.3).
JSON (:func:`tables_json`) holds the same rows with unrounded values and ``null`` for missing cells.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from evaluation.retrieval_metrics import meta_average
from utils.atomic import atomic_write_text

TABLE1_COLUMNS = (("multi30k", "en"), ("multi30k", "de"), ("multi30k", "fr"), ("multi30k", "cs"),
                  ("mscoco", "en"), ("mscoco", "zh"), ("mscoco", "ja"))
DEMO_LANGS = ("en", "de", "fr", "cs", "ja", "zh")
_DISPLAY = {"multi30k": "Multi30K", "mscoco": "MSCOCO", "vqa_v2": "VQA v2", "vg_vqa": "VG-VQA"}
_ALIASES = {"multi30k": "multi30k", "m30k": "multi30k", "mscoco": "mscoco", "coco": "mscoco",
            "coco1k": "mscoco", "vqav2": "vqa_v2", "vqa2": "vqa_v2", "vgvqa": "vg_vqa"}
# UC2 paper, table 1 (AR): setting -> the 7 TABLE1_COLUMNS cells, Meta-Ave as printed.
PAPER_TABLE1 = (
    ("English-only fine-tune", (87.2, 74.9, 74.0, 67.9, 88.1, 82.0, 71.7), 78.0),
    ("All-language fine-tune", (88.2, 84.5, 83.9, 81.2, 88.1, 89.8, 87.5), 86.2),
)
# UC2 paper, VQA: VQA v2 test-dev score; Japanese VG-VQA accuracy and BLEU.
PAPER_VQA = (("UC2 paper (test-dev)", "vqa_v2", "en", (("vqa_score", 71.48),)),
             ("UC2 paper", "vg_vqa", "ja", (("accuracy", 34.2), ("bleu", 26.8))))
_PAPER_PREFIX = "UC2 paper: "
_RETRIEVAL_COLS = (("img_r1", "I→T R@1"), ("img_r5", "I→T R@5"), ("img_r10", "I→T R@10"),
                   ("txt_r1", "T→I R@1"), ("txt_r5", "T→I R@5"), ("txt_r10", "T→I R@10"), ("r_mean", "AR"))
_VQA_COLS = (("vqa_score", "VQA score"), ("accuracy", "Accuracy"), ("bleu", "BLEU"),
             ("majority_vqa_score", "Majority VQA score"), ("majority_accuracy", "Majority accuracy"))


@dataclass(frozen=True)
class Result:
    """One evaluated (setting, dataset, language) with its metric dict (percentages)."""

    setting: str
    dataset: str
    lang: str
    metrics: Mapping[str, float]


def canonical_dataset(name: str) -> str:
    """``"Multi30K"``/``"m30k"`` -> ``"multi30k"``, ``"MSCOCO"``/``"coco"`` -> ``"mscoco"``; others lower-cased."""
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    return _ALIASES.get(key, name.lower())


def _as_result(item: Any, i: int) -> Result:
    """Coerce a Result / 4-tuple / dict to a Result with a canonical dataset name and flat metrics."""
    if isinstance(item, Mapping):
        try:
            item = (item["setting"], item["dataset"], item["lang"], item["metrics"])
        except KeyError as err:
            raise ValueError(f"results[{i}]: missing key {err}; expected setting, dataset, lang, metrics") from None
    elif isinstance(item, Result):
        item = (item.setting, item.dataset, item.lang, item.metrics)
    if not isinstance(item, Sequence) or len(item) != 4:
        raise ValueError(f"results[{i}]: expected (setting, dataset, lang, metrics), got {item!r}")
    setting, dataset, lang, metrics = item
    if isinstance(metrics, Mapping) and isinstance(metrics.get("mean"), Mapping):
        metrics = metrics["mean"]                      # a coco_1k_folds result: report the fold mean
    if not isinstance(metrics, Mapping):
        raise ValueError(f"results[{i}] ({setting}, {dataset}, {lang}): metrics must be a dict, got {metrics!r}")
    for key, value in metrics.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"results[{i}] ({setting}, {dataset}, {lang}): metric {key!r} must be a number, "
                             f"got {value!r}")
    return Result(str(setting), canonical_dataset(str(dataset)), str(lang).lower(), dict(metrics))


def normalize_results(results: Iterable[Any]) -> list[Result]:
    """Coerce every entry (see :func:`_as_result`) and refuse two results for the same cell."""
    out = [_as_result(item, i) for i, item in enumerate(results)]
    seen: dict[tuple[str, str, str], int] = {}
    for i, r in enumerate(out):
        key = (r.setting, r.dataset, r.lang)
        if key in seen:
            raise ValueError(f"results[{i}]: duplicate result for {key} (first at results[{seen[key]}])")
        seen[key] = i
    return out


def _settings(results: Sequence[Result]) -> list[str]:
    """Settings in order of first appearance."""
    return list(dict.fromkeys(r.setting for r in results))


def _fmt(value: float | None, decimals: int) -> str:
    """Fixed decimals, halves rounded up as a reader would (87.25 -> 87.3; format() would give 87.2)."""
    if value is None or not math.isfinite(value):
        return "-"
    return str(Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))


def _md_row(cells: Iterable[str]) -> str:
    # A "|" inside a cell would split it: escape it.
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = [_md_row(header), "|" + "---|" * len(header)]
    lines += [_md_row(r) for r in rows]
    return "\n".join(lines) + "\n"


def _ar_row(by_cell: Mapping[tuple[str, str, str], Result], setting: str,
            columns: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """One row of AR values over ``columns`` and the mean of the cells present (None when none).

    Returns ``{"setting", "cells": {"dataset/lang": AR or None}, "mean", "complete"}``.
    """
    cells: dict[str, float | None] = {}
    present: dict[tuple[str, str], float] = {}
    for dataset, lang in columns:
        r = by_cell.get((setting, dataset, lang))
        value = None if r is None or "r_mean" not in r.metrics else float(r.metrics["r_mean"])
        cells[f"{dataset}/{lang}"] = value
        if value is not None:
            present[(dataset, lang)] = value
    mean = meta_average(present) if present else None
    return {"setting": setting, "cells": cells, "mean": mean, "complete": len(present) == len(columns)}


def _paper_table1_rows() -> list[dict[str, Any]]:
    keys = [f"{d}/{lang}" for d, lang in TABLE1_COLUMNS]
    return [{"setting": _PAPER_PREFIX + name, "cells": dict(zip(keys, values)), "mean": meta,
             "complete": True} for name, values, meta in PAPER_TABLE1]


def table1_rows(results: Iterable[Any], include_paper: bool = False) -> list[dict[str, Any]]:
    """Paper table 1 as rows: ``{"setting", "cells": {"multi30k/en": AR|None, ...}, "mean" (Meta-Ave),
    "complete"}``; settings in order of first appearance, paper rows last."""
    res = normalize_results(results)
    by_cell = {(r.setting, r.dataset, r.lang): r for r in res}
    rows = [_ar_row(by_cell, setting, TABLE1_COLUMNS) for setting in _settings(res)]
    return rows + (_paper_table1_rows() if include_paper else [])


def _ar_markdown(rows: Sequence[Mapping[str, Any]], header: Sequence[str], mean_name: str) -> str:
    """Render AR rows (from :func:`_ar_row`), marking incomplete means with ``*`` plus a footnote."""
    body = []
    for row in rows:
        mean = _fmt(row["mean"], 1)
        if row["mean"] is not None and not row["complete"]:
            mean += "*"
        body.append([row["setting"], *(_fmt(v, 1) for v in row["cells"].values()), mean])
    text = _md_table(header, body)
    if any(row["mean"] is not None and not row["complete"] for row in rows):
        text += f"\n\\* {mean_name} over the cells present only.\n"
    return text


def table1_markdown(results: Iterable[Any], include_paper: bool = False) -> str:
    """Paper table 1 layout in Markdown: AR per cell (1 decimal) and Meta-Ave."""
    header = ["Setting", *(f"{_DISPLAY[d]} {lang}" for d, lang in TABLE1_COLUMNS), "Meta-Ave"]
    return _ar_markdown(table1_rows(results, include_paper), header, "Meta-Ave")


def demo_rows(results: Iterable[Any], dataset: str | None = None,
              langs: Sequence[str] = DEMO_LANGS) -> list[dict[str, Any]]:
    """Rows for one dataset over ``langs`` (default en de fr cs ja zh) and their mean AR.

    ``dataset`` may be left out when the results hold exactly one dataset.
    """
    res = normalize_results(results)
    datasets = list(dict.fromkeys(r.dataset for r in res))
    if dataset is None:
        if len(datasets) != 1:
            raise ValueError(f"demo table: results hold datasets {datasets}; pass dataset= to pick one")
        dataset = datasets[0]
    dataset = canonical_dataset(dataset)
    chosen = [r for r in res if r.dataset == dataset]
    if not chosen:
        raise ValueError(f"demo table: no result for dataset {dataset!r} (have {datasets})")
    by_cell = {(r.setting, r.dataset, r.lang): r for r in chosen}
    return [_ar_row(by_cell, s, [(dataset, lang) for lang in langs]) for s in _settings(chosen)]


def demo_markdown(results: Iterable[Any], dataset: str | None = None,
                  langs: Sequence[str] = DEMO_LANGS) -> str:
    """Demo layout in Markdown: one dataset, one AR column per language, then their mean."""
    rows = demo_rows(results, dataset, langs)
    return _ar_markdown(rows, ["Setting", *langs, "Mean"], "Mean")


def _cell_order(r: Result) -> int:
    """Position in the paper's column order; other cells after them, in input order (sort is stable)."""
    key = (r.dataset, r.lang)
    return TABLE1_COLUMNS.index(key) if key in TABLE1_COLUMNS else len(TABLE1_COLUMNS)


def detail_rows(results: Iterable[Any]) -> list[dict[str, Any]]:
    """One row per result: ``{"setting", "dataset", "lang", "img_r1", ..., "txt_r10", "r_mean"}`` (None
    when missing); settings in order of first appearance, cells in paper order within a setting."""
    res = normalize_results(results)
    order = {s: i for i, s in enumerate(_settings(res))}
    res = sorted(res, key=lambda r: (order[r.setting], _cell_order(r)))
    return [{"setting": r.setting, "dataset": r.dataset, "lang": r.lang,
             **{key: r.metrics.get(key) for key, _ in _RETRIEVAL_COLS}} for r in res]


def detail_markdown(results: Iterable[Any]) -> str:
    """Recall@1/5/10 in both directions and AR per (setting, dataset, lang), 1 decimal."""
    header = ["Setting", "Dataset", "Lang", *(title for _, title in _RETRIEVAL_COLS)]
    body = [[row["setting"], _DISPLAY.get(row["dataset"], row["dataset"]), row["lang"],
             *(_fmt(row[key], 1) for key, _ in _RETRIEVAL_COLS)] for row in detail_rows(results)]
    return _md_table(header, body)


def vqa_rows(results: Iterable[Any], include_paper: bool = False) -> list[dict[str, Any]]:
    """One row per VQA result: ``{"setting", "dataset", "lang", "vqa_score", "accuracy", "bleu",
    "majority_vqa_score", "majority_accuracy"}`` (None when missing); paper rows last."""
    res = normalize_results(results)
    if include_paper:
        res += [Result(setting, d, lang, dict(m)) for setting, d, lang, m in PAPER_VQA]
    return [{"setting": r.setting, "dataset": r.dataset, "lang": r.lang,
             **{key: r.metrics.get(key) for key, _ in _VQA_COLS}} for r in res]


def vqa_markdown(results: Iterable[Any], include_paper: bool = False) -> str:
    """VQA table in Markdown, 2 decimals, ``-`` where a metric is absent."""
    header = ["Setting", "Dataset", "Lang", *(title for _, title in _VQA_COLS)]
    body = [[row["setting"], _DISPLAY.get(row["dataset"], row["dataset"]), row["lang"],
             *(_fmt(row[key], 2) for key, _ in _VQA_COLS)] for row in vqa_rows(results, include_paper)]
    return _md_table(header, body)


def tables_json(retrieval: Iterable[Any] = (), vqa: Iterable[Any] = (), include_paper: bool = False,
                demo_dataset: str | None = None) -> dict[str, Any]:
    """All tables as one JSON-serialisable dict (unrounded values, None for missing cells)."""
    retrieval = normalize_results(retrieval)
    out: dict[str, Any] = {
        "table1": {"columns": [f"{d}/{lang}" for d, lang in TABLE1_COLUMNS],
                   "rows": table1_rows(retrieval, include_paper)},
        "detail": detail_rows(retrieval),
        "vqa": vqa_rows(vqa, include_paper),
    }
    if demo_dataset is not None:
        out["demo"] = {"dataset": canonical_dataset(demo_dataset), "langs": list(DEMO_LANGS),
                       "rows": demo_rows(retrieval, demo_dataset)}
    return out


def tables_markdown(retrieval: Iterable[Any] = (), vqa: Iterable[Any] = (), include_paper: bool = False,
                    demo_dataset: str | None = None) -> str:
    """All tables as one Markdown document with a heading per table (empty sections left out)."""
    retrieval, vqa = normalize_results(retrieval), normalize_results(vqa)
    parts = []
    if retrieval or include_paper:
        parts.append("## Retrieval: Average Recall (paper table 1)\n\n" + table1_markdown(retrieval, include_paper))
    if retrieval:
        parts.append("## Retrieval: Recall@K\n\n" + detail_markdown(retrieval))
    if demo_dataset is not None:
        name = _DISPLAY.get(canonical_dataset(demo_dataset), demo_dataset)
        parts.append(f"## Demo: {name}\n\n" + demo_markdown(retrieval, demo_dataset))
    if vqa or include_paper:
        parts.append("## VQA\n\n" + vqa_markdown(vqa, include_paper))
    return "\n".join(parts)


def write_tables(out_dir: str | os.PathLike, retrieval: Iterable[Any] = (), vqa: Iterable[Any] = (),
                 include_paper: bool = True, demo_dataset: str | None = None) -> tuple[Path, Path]:
    """Write ``results.md`` and ``results.json`` into ``out_dir`` (created if needed), each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    retrieval, vqa = normalize_results(retrieval), normalize_results(vqa)
    md_path, json_path = out / "results.md", out / "results.json"
    # Build both texts before writing either, so a rendering error leaves neither file changed.
    md = tables_markdown(retrieval, vqa, include_paper, demo_dataset)
    js = json.dumps(tables_json(retrieval, vqa, include_paper, demo_dataset), indent=2, ensure_ascii=False)
    atomic_write_text(md_path, md)
    atomic_write_text(json_path, js + "\n")
    return md_path, json_path


# ----------------------------------------------------------------------------------- fast retrieval

SHORTLIST_HEADER = ("Set", "Lang", "Exhaustive AR", "Shortlist AR (dual encoder)", "Shortlist + rerank AR",
                    "Recall@k t->i / i->t", "k_img / k_txt", "Pairs scored", "Pair ratio",
                    "Exhaustive s", "Shortlist + rerank s")


#: the sentence under the shortlist table saying where a query's unshortlisted candidates rank
BELOW_SHORTLIST_NOTE = {
    "dual_encoder": "Candidates outside a query's shortlist rank below its k reranked ones, in the dual "
                    "encoder's order (a positive missed by the shortlist can count only at R@K with K > k).",
    "tied": "Candidates outside a query's shortlist rank below its k reranked ones, all tied, and ties count "
            "against the positive (a positive missed by the shortlist counts at no R@K).",
}


def shortlist_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per set and language: exhaustive AR (when measured), the dual encoder's AR, the reranked AR, the
    shortlist's recall of the positive at k, pairs scored (and how many times fewer than exhaustive) and
    wall times, then the sentence saying where each row's unshortlisted candidates rank
    (:data:`BELOW_SHORTLIST_NOTE`). ``rows``: ``{"name", "lang", **ShortlistResult.row(), "seconds_exhaustive"?}``."""
    body = []
    for r in rows:
        ratio = r["pairs_total"] / max(r["pairs_scored"], 1)
        body.append([r["name"], r["lang"], _fmt(r.get("exhaustive_ar"), 1), _fmt(r["dual_ar"], 1),
                     _fmt(r["rerank_ar"], 1), f"{_fmt(r['txt_recall_at_k'], 1)} / {_fmt(r['img_recall_at_k'], 1)}",
                     f"{r['k_img']} / {r['k_txt']}", f"{r['pairs_scored']:,} of {r['pairs_total']:,}",
                     f"{_fmt(ratio, 1)}x", _fmt(r.get("seconds_exhaustive"), 2), _fmt(r["seconds_total"], 2)])
    if len(rows) > 1:
        def mean(key: str) -> float | None:
            values = [r.get(key) for r in rows]
            return None if any(v is None for v in values) else float(sum(values) / len(values))
        scored, total = sum(r["pairs_scored"] for r in rows), sum(r["pairs_total"] for r in rows)
        body.append(["**Mean**", "", _fmt(mean("exhaustive_ar"), 1), _fmt(mean("dual_ar"), 1),
                     _fmt(mean("rerank_ar"), 1), f"{_fmt(mean('txt_recall_at_k'), 1)} / "
                     f"{_fmt(mean('img_recall_at_k'), 1)}", "", f"{scored:,} of {total:,}",
                     f"{_fmt(total / max(scored, 1), 1)}x", _fmt(mean("seconds_exhaustive"), 2),
                     _fmt(mean("seconds_total"), 2)])
    tails = sorted({r.get("below_shortlist", "dual_encoder") for r in rows})
    return _md_table(SHORTLIST_HEADER, body) + "\n" + "\n".join(BELOW_SHORTLIST_NOTE.get(t, t) for t in tails) + "\n"


def write_shortlist_table(out_dir: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> str:
    """Write ``shortlist.md`` and ``shortlist.json`` into ``out_dir``; returns the Markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = "## Fast retrieval: shortlist (itc head) + cross-encoder rerank\n\n" + shortlist_markdown(rows)
    js = json.dumps([dict(r) for r in rows], indent=2, ensure_ascii=False)
    atomic_write_text(out / "shortlist.md", md)
    atomic_write_text(out / "shortlist.json", js + "\n")
    return md
