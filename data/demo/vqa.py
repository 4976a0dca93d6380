"""VQA questions about a demo scene, in English and Japanese, with 10 noisy annotator answers each.

Four question types, cycled per image so the types are balanced: colour ("what colour is the cube?"),
count ("how many balls are there?"), existence ("is there a dog?") and relation ("what is to the left of the
cup?"). A question is only asked when its answer is unique (the object asked about is the only one of its
class; exactly one object stands in the asked relation). Count and existence questions pick their answer
first (uniformly among the feasible ones), so "yes" and "1" do not dominate.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.demo import lexicon as lx
from data.demo.scene import NUM_CLASSES, Scene, objects_related

QTYPES = ("colour", "count", "exist", "relation")
NUM_ANNOTATORS = 10
MAX_COUNT = 4


@dataclass(frozen=True)
class Question:
    """Language-independent question: its type, the class asked about, the relation, and the true answer.

    ``answer`` is a concept: a colour key, a count (int), True/False, or a class key.
    """

    qtype: str
    cls_key: str
    answer: object
    relation: str | None = None


def _colour_question(scene: Scene, rng: np.random.Generator) -> Question | None:
    counts = scene.class_counts()
    unique = [o for o in scene.objects if counts[o.cls] == 1]
    if not unique:
        return None
    obj = unique[int(rng.integers(len(unique)))]
    return Question("colour", obj.cls_key, obj.colour_key)


def _count_question(scene: Scene, rng: np.random.Generator) -> Question:
    counts = scene.class_counts()
    feasible = sorted({0, *counts.values()})
    answer = feasible[int(rng.integers(len(feasible)))]
    if answer == 0:
        absent = [c for c in range(1, NUM_CLASSES) if c not in counts]
        cls = absent[int(rng.integers(len(absent)))]
    else:
        options = sorted(c for c, k in counts.items() if k == answer)
        cls = options[int(rng.integers(len(options)))]
    return Question("count", lx.CLASS_KEYS[cls - 1], answer)


def _exist_question(scene: Scene, rng: np.random.Generator) -> Question:
    present = sorted(scene.class_counts())
    answer = bool(rng.random() < 0.5)
    pool = present if answer else [c for c in range(1, NUM_CLASSES) if c not in present]
    return Question("exist", lx.CLASS_KEYS[pool[int(rng.integers(len(pool)))] - 1], answer)


def _relation_question(scene: Scene, rng: np.random.Generator) -> Question | None:
    counts = scene.class_counts()
    options = []
    for ref, obj in enumerate(scene.objects):
        if counts[obj.cls] != 1:
            continue
        for rel in lx.RELATION_KEYS:
            related = objects_related(scene, ref, rel)
            if len(related) == 1:
                options.append((obj.cls_key, rel, scene.objects[related[0]].cls_key))
    if not options:
        return None
    ref_key, rel, answer = options[int(rng.integers(len(options)))]
    return Question("relation", ref_key, answer, relation=rel)


_MAKERS = {"colour": _colour_question, "count": _count_question, "exist": _exist_question,
           "relation": _relation_question}


def sample_questions(scene: Scene, n: int, rng: np.random.Generator) -> list[Question]:
    """``n`` questions; types rotate from an image-dependent start, skipping types this scene cannot ask."""
    questions = []
    start = scene.index
    for k in range(n):
        for shift in range(len(QTYPES)):
            q = _MAKERS[QTYPES[(start + k + shift) % len(QTYPES)]](scene, rng)
            if q is not None:
                break
        questions.append(q)
    return questions


def _answer_pool(qtype: str) -> tuple:
    return {"colour": lx.COLOUR_KEYS, "count": tuple(range(MAX_COUNT + 1)), "exist": (True, False),
            "relation": lx.CLASS_KEYS}[qtype]


def annotate(q: Question, rng: np.random.Generator) -> list[object]:
    """10 annotator answers (concepts): each wrong with a per-question rate 0-35 %, drawn from the type's pool."""
    noise = rng.uniform(0.0, 0.35)
    wrong = [a for a in _answer_pool(q.qtype) if a != q.answer]
    return [wrong[int(rng.integers(len(wrong)))] if rng.random() < noise else q.answer
            for _ in range(NUM_ANNOTATORS)]


# ----------------------------------------------------------------------------------------------- rendering
_EN_REL = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
_JA_REL = {"left": "左", "right": "右", "above": "上", "below": "下"}


def question_words(lang: str, q: Question) -> list[str]:
    """The question in ``lang`` ("en" or "ja") as words; ja words are what a segmenter would give."""
    if lang == "en":
        singular, plural = lx.EN_NOUNS[q.cls_key]
        article = "an" if singular[0] in "aeiou" else "a"
        text = {"colour": f"what colour is the {singular}?", "count": f"how many {plural} are there?",
                "exist": f"is there {article} {singular}?",
                "relation": f"what is {_EN_REL.get(q.relation, '')} the {singular}?"}[q.qtype]
        return text.split()
    if lang == "ja":
        noun, counter = lx.JA_NOUNS[q.cls_key]
        verb = ["い", "ます"] if q.cls_key in lx.ANIMATE else ["あり", "ます"]
        return {"colour": [noun, "は", "何色", "です", "か", "？"],
                "count": [noun, "は", "何" + counter, *verb, "か", "？"],
                "exist": [noun, "は", *verb, "か", "？"],
                "relation": [noun, "の", _JA_REL.get(q.relation, ""), "に", "何", "が", "あり", "ます", "か",
                             "？"]}[q.qtype]
    raise ValueError(f"VQA questions exist in {lx.VQA_LANGS}, not {lang!r}")


def question_text(lang: str, q: Question) -> str:
    """The question in ``lang`` ("en" or "ja") as running text (ja unsegmented)."""
    words = question_words(lang, q)
    return "".join(words) if lang in lx.NO_SPACE_LANGS else " ".join(words)


def answer_text(lang: str, q: Question, answer: object) -> str:
    """An answer concept as a word: counts in Japanese use the class's counter (二匹), zero is ゼロ."""
    if q.qtype == "exist":
        return ("yes" if answer else "no") if lang == "en" else ("はい" if answer else "いいえ")
    if q.qtype == "count":
        if lang == "en":
            return str(answer)
        return lx.JA_NUMERALS[answer] + (lx.JA_NOUNS[q.cls_key][1] if answer else "")
    if q.qtype == "colour":
        return answer if lang == "en" else lx.JA_COLOURS[answer][1]
    return lx.EN_NOUNS[answer][0] if lang == "en" else lx.JA_NOUNS[answer][0]
