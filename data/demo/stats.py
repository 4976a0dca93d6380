"""Statistics of a built demo corpus (``stats.json``) and their readable table."""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path



def summarize_counts(counts: Sequence[int]) -> dict:
    """{min, mean, max} of a list of counts (mean rounded to 3 decimals)."""
    if not counts:
        return {"min": 0, "mean": 0.0, "max": 0}
    return {"min": int(min(counts)), "mean": round(sum(counts) / len(counts), 3), "max": int(max(counts))}


def _soft_score(count: int) -> float:
    """VQA soft score of an answer given by ``count`` annotators (1: 0.3, 2: 0.6, 3: 0.9, 4+: 1.0)."""
    return min(1.0, round(0.3 * count, 1))


def _read_answers(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["answers"] for line in f if line.strip()]


def vqa_answer_stats(raw_dir: Path, lang: str) -> dict:
    """Answer vocabulary size of the train split and the majority-answer baseline's VQA score on val.

    The baseline always answers the train split's most frequent majority answer; a low score means the
    corpus cannot be solved without looking at the image and question.
    """
    train = _read_answers(raw_dir / f"vqa_train_{lang}.jsonl")
    val = _read_answers(raw_dir / f"vqa_val_{lang}.jsonl")
    vocab = {a for answers in train for a in answers}
    majority = Counter(Counter(a).most_common(1)[0][0] for a in train).most_common(1)[0][0]
    score = sum(_soft_score(answers.count(majority)) for answers in val) / max(1, len(val))
    return {"answer_vocab": len(vocab), "majority_answer": majority, "majority_val_score": round(score, 4)}


def _row(cells: Sequence[object], widths: Sequence[int]) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()


def _table(header: Sequence[str], rows: list[Sequence[object]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return [_row(header, widths), _row(["-" * w for w in widths], widths)] + [_row(r, widths) for r in rows]


def format_stats(stats: dict) -> str:
    """A plain-text report of ``stats`` (the dict written to stats.json)."""
    splits = list(stats["images"])
    lines = [f"demo corpus at {stats['out_dir']} (seed {stats['config']['seed']})", ""]
    lines += _table(["", *splits], [["images", *(stats["images"][s] for s in splits)]])
    lines += [""] + _table(["captions", *splits], [[lang, *(stats["captions"][lang][s] for s in splits)]
                                                 for lang in stats["captions"]])
    lines += [""] + _table(["paired", *splits], [[pair, *(stats["paired"][pair][s] for s in splits)]
                                               for pair in stats["paired"]])
    lines += [""] + _table(["vqa questions", *splits], [[lang, *(stats["vqa"][lang][s] for s in splits)]
                                                      for lang in stats["vqa"]])
    types = stats["vqa_types"]
    lines += [""] + _table(["question type", *splits], [[t, *(types[s].get(t, 0) for s in splits)]
                                                      for t in sorted({t for s in splits for t in types[s]})])
    lines += [""] + _table(["vqa lang", "answer vocab", "majority answer", "majority val score"],
                           [[lang, v["answer_vocab"], v["majority_answer"], v["majority_val_score"]]
                            for lang, v in stats["vqa_answers"].items()])
    reg = stats["regions"]
    lines += [""] + _table(["regions per image", "min", "mean", "max"],
                           [[name, r["min"], r["mean"], r["max"]] for name, r in reg.items()])
    lines += ["", f"tokenizer: {stats['tokenizer']['dir']} ({stats['tokenizer']['vocab_size']} ids); "
              f"img_db: {stats['img_db']['dir']}/{stats['img_db']['sub_db']}; "
              f"{len(stats['txt_dbs'])} txt_dbs under txt_db/"]
    return "\n".join(lines)

