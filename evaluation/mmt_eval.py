"""MMT evaluation and probes: scores of a split, accuracy of masked source words in the output, image
awareness under incongruent (shuffled) images, and the seed-shaped results table (mean ± std over seeds).

Masked-word accuracy (source degradation probe): for every masked source word w with a dictionary entry
``lexicon[w]`` (its translations, every inflection), *restrict* counts w as right when a form of w that the
reference uses appears in the hypothesis, *relaxed* when any form of w does; words whose translation the
reference does not contain are not counted (``n``). Words are compared in the seed's tok form (Moses
tokens, lowercase, accents stripped).

Image awareness: Δ = score(congruent images) − mean score over ``n`` random permutations of the images
among the split's sentences (a text-only model has Δ = 0 exactly).
"""
from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

import numpy as np


def masked_word_accuracy(masked_words: Sequence[Sequence[str]], hyps: Sequence[str], refs: Sequence[str],
                         lexicon: Mapping[str, Sequence[str]], tgt_lang: str) -> dict[str, float]:
    """``restrict``/``relaxed`` accuracy in % and the number ``n`` of masked words counted."""
    from utils.mt_metrics import normalise, tok_form

    forms = {normalise(k): {normalise(f) for f in v} for k, v in lexicon.items()}
    hyp_tokens = [set(h.split()) for h in tok_form(hyps, tgt_lang)]
    ref_tokens = [set(r.split()) for r in tok_form(refs, tgt_lang)]
    n = restrict = relaxed = 0
    for words, hyp, ref in zip(masked_words, hyp_tokens, ref_tokens):
        for word in words:
            targets = forms.get(normalise(word), set())
            in_ref = targets & ref
            if not in_ref:
                continue
            n += 1
            restrict += bool(in_ref & hyp)
            relaxed += bool(targets & hyp)
    pct = (lambda k: 100.0 * k / n) if n else (lambda k: float("nan"))
    return {"restrict": pct(restrict), "relaxed": pct(relaxed), "n": float(n)}


def split_scores(out: Mapping[str, list], tgt_lang: str, with_meteor: bool = True,
                 lexicon: Mapping[str, Sequence[str]] | None = None) -> dict:
    """All metrics of one translated split (``TranslationTask.translate`` output); signatures kept."""
    from utils.mt_metrics import translation_scores

    scores = translation_scores(out["hyps"], out["refs"], tgt_lang, with_meteor=with_meteor)
    result = {name: {"score": r.score, "signature": r.signature, "note": r.note} for name, r in scores.items()}
    if lexicon is not None and any(out["masked_words"]):
        result["masked_words"] = masked_word_accuracy(out["masked_words"], out["hyps"], out["refs"], lexicon,
                                                      tgt_lang)
    return result


def permutations(n: int, count: int, seed: int) -> list[tuple[int, ...]]:
    """``count`` random permutations of range(n) without fixed points where possible (derangements by
    rejection, at most 100 tries each), from a seeded generator."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        for _ in range(100):
            perm = rng.permutation(n)
            if n < 2 or not (perm == np.arange(n)).any():
                break
        out.append(tuple(int(i) for i in perm))
    return out


def image_awareness(congruent: float, shuffled: Sequence[float]) -> dict[str, float]:
    """Δ = congruent − mean(shuffled), with the shuffled scores' mean and standard deviation."""
    mean = statistics.fmean(shuffled)
    std = statistics.stdev(shuffled) if len(shuffled) > 1 else 0.0
    # the mean of the differences: exactly 0 when every shuffle scores as the congruent images do (NMT)
    delta = statistics.fmean(congruent - s for s in shuffled)
    return {"congruent": congruent, "shuffled_mean": mean, "shuffled_std": std, "delta": delta}


def mean_std(values: Sequence[float]) -> str:
    """"m ± s" (sample std; "m" alone for one value; "–" for none)."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


SEED_TEST_SETS = ("test2016", "test2017", "COCO")


def seed_table(results: Mapping[str, Mapping[tuple[str, str], Sequence[float]]],
               pairs: Sequence[str] = ("en-de", "en-fr"), test_sets: Sequence[str] = SEED_TEST_SETS) -> str:
    """Markdown table shaped like the seed's: one row per system, columns test set × pair, mean ± std.

    ``results[system][(pair, test_set)]`` = the scores of its runs (seeds).
    """
    head = "| system | " + " | ".join(f"{p} {t}" for p in pairs for t in test_sets) + " |"
    rule = "|---" * (1 + len(pairs) * len(test_sets)) + "|"
    rows = [f"| {system} | " + " | ".join(mean_std(cells.get((p, t), ())) for p in pairs for t in test_sets) + " |"
            for system, cells in results.items()]
    return "\n".join([head, rule, *rows])
