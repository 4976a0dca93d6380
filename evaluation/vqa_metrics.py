"""VQA metrics: soft VQA score, exact-match accuracy, character-level BLEU, majority-answer baseline.

Every function returns a plain ``dict[str, float]`` (counts too), percentages in [0, 100], so results fit
the trainer's ``validate() -> dict[str, float]`` contract and the VQA results table
(:mod:`evaluation.results_table`) directly.

Answer strings are compared after ``str.strip()`` only: no lower-casing or punctuation rules, because the
Japanese VG-VQA answers the accuracy/BLEU metrics are used for have no case, and VQA v2 answers are already
normalised by the preprocessing that built the answer vocabulary.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _pred_array(pred_labels: Any) -> np.ndarray:
    """(N,) predicted answer indices, from indices (N,) or logits (N, n_answers) (argmax taken)."""
    if hasattr(pred_labels, "detach"):  # torch.Tensor
        pred_labels = pred_labels.detach().cpu().float().numpy() if pred_labels.is_floating_point() \
            else pred_labels.detach().cpu().numpy()
    pred = np.asarray(pred_labels)
    if pred.ndim == 2:
        return pred.argmax(axis=1)
    if pred.ndim != 1 or not np.issubdtype(pred.dtype, np.integer):
        raise ValueError(f"pred_labels: expected (N,) integer answer indices or (N, n_answers) logits, "
                         f"got shape {pred.shape} dtype {pred.dtype}")
    return pred


def _flatten_targets(target_labels: Sequence, target_scores: Sequence,
                     n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flatten ragged targets to (question index, label, score) arrays of equal length M."""
    if len(target_labels) != n or len(target_scores) != n:
        raise ValueError(f"targets: expected {n} label lists and {n} score lists (one per prediction), "
                         f"got {len(target_labels)} and {len(target_scores)}")
    lens = np.array([len(lab) for lab in target_labels], dtype=np.int64)
    for i, (lab, sc) in enumerate(zip(target_labels, target_scores)):
        if len(lab) != len(sc):
            raise ValueError(f"targets: question {i} has {len(lab)} labels but {len(sc)} scores")
    qidx = np.repeat(np.arange(n), lens)                                     # (M,)
    labels = np.concatenate([np.asarray(lab, dtype=np.int64).reshape(-1) for lab in target_labels]) \
        if lens.sum() else np.zeros(0, dtype=np.int64)
    scores = np.concatenate([np.asarray(sc, dtype=np.float64).reshape(-1) for sc in target_scores]) \
        if lens.sum() else np.zeros(0)
    bad = ~np.isfinite(scores) | (scores < 0) | (scores > 1)
    if bad.any():
        j = int(np.argmax(bad))
        raise ValueError(f"targets: question {qidx[j]} has soft score {scores[j]}, expected 0 <= score <= 1")
    return qidx, labels, scores


def vqa_score(pred_labels: Any, target_labels: Sequence[Sequence[int]],
              target_scores: Sequence[Sequence[float]]) -> dict[str, float]:
    """Mean soft score of the predicted answer (the VQA score), in percent.

    Args:
        pred_labels: (N,) predicted answer indices, or (N, n_answers) logits (argmax is taken).
        target_labels: N lists of gold answer indices (the txt_db ``target.labels``).
        target_scores: N lists of their soft scores in [0, 1] (``target.scores``).
    Returns:
        ``vqa_score``; ``n_questions``; ``n_no_target``: questions whose gold answers are all outside the
        answer vocabulary (empty target lists). They score 0 but stay in the denominator, so the score is
        comparable with the official evaluation over all questions.
    """
    pred = _pred_array(pred_labels)
    n = len(pred)
    if n == 0:
        raise ValueError("pred_labels: expected at least one prediction, got none")
    qidx, labels, scores = _flatten_targets(target_labels, target_scores, n)
    per_q = np.zeros(n)                                                      # (N,)
    hit = labels == pred[qidx]                                               # (M,)
    # max, not sum: a label listed twice for one question must not count twice
    np.maximum.at(per_q, qidx[hit], scores[hit])
    n_no_target = int(n - np.unique(qidx).size)
    return {"vqa_score": float(100.0 * per_q.mean()), "n_questions": float(n),
            "n_no_target": float(n_no_target)}


def _gold_list(gold: str | Sequence[str], i: int) -> list[str]:
    """Gold answers of question ``i`` as a list of stripped strings (a single string is one answer)."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    if not golds or not all(isinstance(g, str) for g in golds):
        raise ValueError(f"gold answers: question {i} needs at least one answer string, got {gold!r}")
    return [g.strip() for g in golds]


def _check_pairs(preds: Sequence[str], golds: Sequence, what: str) -> None:
    if len(preds) != len(golds) or not preds:
        raise ValueError(f"{what}: expected as many gold entries as predictions (at least one), "
                         f"got {len(preds)} predictions and {len(golds)} gold entries")


def accuracy(pred_answers: Sequence[str], gold_answers: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """Exact-match accuracy against the most common gold answer of each question, in percent.

    ``gold_answers[i]`` is one string or the list of annotators' answers. When several answers tie for
    most common, matching any of them counts (the rule must not depend on annotation order).
    """
    _check_pairs(pred_answers, gold_answers, "accuracy")
    correct = 0
    for i, (pred, gold) in enumerate(zip(pred_answers, gold_answers)):
        counts = Counter(_gold_list(gold, i))
        top = max(counts.values())
        correct += counts.get(str(pred).strip(), 0) == top
    return {"accuracy": 100.0 * correct / len(pred_answers), "n_questions": float(len(pred_answers))}


def bleu_char(pred_answers: Sequence[str], gold_answers: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu, 4-grams, default exp smoothing) on characters, for Japanese answers.

    Japanese is written without spaces, so word tokenisation would turn each answer into one token;
    ``tokenize="char"`` scores character n-grams instead. Each question's distinct gold answers are its
    references (a variable number per question is allowed).
    """
    import sacrebleu  # deferred: only Japanese VG-VQA evaluation needs it, keep importing this module cheap

    _check_pairs(pred_answers, gold_answers, "bleu_char")
    refs = [list(dict.fromkeys(_gold_list(g, i))) for i, g in enumerate(gold_answers)]
    n_streams = max(len(r) for r in refs)
    # sacrebleu wants reference *streams*; None pads questions with fewer references.
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(n_streams)]
    hyps = [str(p).strip() for p in pred_answers]
    result = sacrebleu.corpus_bleu(hyps, streams, tokenize="char")
    return {"bleu": float(result.score), "n_questions": float(len(hyps))}


def most_common_answer(answers: Sequence[str | Sequence[str]]) -> str:
    """Most frequent answer string over all annotations (ties: the one seen first)."""
    flat = [a for i, ans in enumerate(answers) for a in _gold_list(ans, i)]
    if not flat:
        raise ValueError("most_common_answer: expected at least one answer, got none")
    return Counter(flat).most_common(1)[0][0]


def majority_baseline(train_answers: Sequence[str | Sequence[str]],
                      eval_golds: Sequence[str | Sequence[str]] | None = None, *,
                      ans2label: Mapping[str, int] | None = None,
                      target_labels: Sequence[Sequence[int]] | None = None,
                      target_scores: Sequence[Sequence[float]] | None = None) -> dict[str, float]:
    """Scores of always answering the most common training answer.

    Args:
        train_answers: training answers (a string or annotators' list per question).
        eval_golds: evaluation gold answers -> ``majority_accuracy`` (see :func:`accuracy`).
        ans2label, target_labels, target_scores: evaluation soft targets -> ``majority_vqa_score``
            (see :func:`vqa_score`); a majority answer outside ``ans2label`` scores 0 everywhere.
    """
    if eval_golds is None and target_labels is None:
        raise ValueError("majority_baseline: give eval_golds and/or target_labels + target_scores")
    answer = most_common_answer(train_answers)
    out: dict[str, float] = {}
    if eval_golds is not None:
        out["majority_accuracy"] = accuracy([answer] * len(eval_golds), eval_golds)["accuracy"]
    if target_labels is not None:
        if ans2label is None or target_scores is None:
            raise ValueError("majority_baseline: target_labels needs ans2label and target_scores too")
        label = ans2label.get(answer, -1)                    # -1 never matches a gold label
        pred = np.full(len(target_labels), label, dtype=np.int64)
        out["majority_vqa_score"] = vqa_score(pred, target_labels, target_scores)["vqa_score"]
    return out
