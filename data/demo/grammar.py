"""Caption grammars: one scene description rendered in en, de, fr, cs, ja and zh with its word alignment.

A :class:`Description` says *what* a caption states (which objects, with or without their size, a position,
a relation). :func:`render` turns it into a list of :data:`Word` = (text, tags). A tag is
``(sense, scope)``: the sense names the concept (``"class:cube"``, ``"colour:red"``, ``"det"``,
``"rel:left"``, ``"of"``...) and the scope says which mention or phrase it belongs to. Two renderings of
the same description are aligned by pairing words that share a tag, so the alignment is correct by
construction. ``words_text`` gives the whitespace-separated form (paired files, ja/zh segmented);
``caption_text`` the natural monolingual form (ja/zh unsegmented, commas attached).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data.demo import lexicon as lx
from data.demo.scene import Scene, SceneObject, relation

Word = tuple[str, frozenset]  # (surface text, {(sense, scope), ...})
KINDS = ("np", "photo", "rel", "list")


@dataclass(frozen=True)
class Mention:
    """An object the caption names; ``size`` says whether its size adjective is spoken."""

    obj: int
    size: bool


@dataclass(frozen=True)
class Description:
    """Language-independent content of one caption.

    kind: "np" (one object, optional position, optional "there is"), "photo" ("a photo of X"),
    "rel" ("X to the left of Y"), "list" ("X, Y and Z").
    """

    kind: str
    mentions: tuple[Mention, ...]
    there: bool = False
    position: str | None = None
    relation: str | None = None
    photo_word: str = "photo"


def _w(text: str, *tags: tuple) -> Word:
    return (text, frozenset(tags))


def _phrase(words: Sequence[tuple[str, str | None]], head_sense: str, scope: object) -> list[Word]:
    """Words of a lexicon phrase: part "head" gets ``head_sense``, other named parts are senses themselves."""
    out = []
    for text, part in words:
        sense = head_sense if part == "head" else part
        out.append(_w(text, (sense, scope)) if sense else _w(text))
    return out


def _content_tags(obj: SceneObject, slot: int) -> tuple[tuple, tuple, tuple]:
    return (f"class:{obj.cls_key}", slot), (f"colour:{obj.colour_key}", slot), (f"size:{obj.size_key}", slot)


# ----------------------------------------------------------------------------------------------- noun phrases
def _np_en(obj: SceneObject, slot: int, size: bool, **_) -> list[Word]:
    cls_t, col_t, size_t = _content_tags(obj, slot)
    body = ([_w(obj.size_key, size_t)] if size else []) + [_w(obj.colour_key, col_t),
                                                          _w(lx.EN_NOUNS[obj.cls_key][0], cls_t)]
    article = "an" if body[0][0][0] in "aeiou" else "a"
    return [_w(article, ("det", slot))] + body


def _np_de(obj: SceneObject, slot: int, size: bool, case: str = "nom", **_) -> list[Word]:
    cls_t, col_t, size_t = _content_tags(obj, slot)
    noun, gender = lx.DE_NOUNS[obj.cls_key]
    article, ending = lx.DE_ARTICLE[(case, gender)]
    words = [_w(article, ("det", slot))]
    if size:
        words.append(_w(lx.DE_SIZES[obj.size_key] + ending, size_t))
    return words + [_w(lx.DE_COLOURS[obj.colour_key] + ending, col_t), _w(noun, cls_t)]


def _np_fr(obj: SceneObject, slot: int, size: bool, de_tag: tuple | None = None, **_) -> list[Word]:
    """French NP; ``de_tag`` set means a preceding "de" merges into the article ("d'un") carrying that tag."""
    cls_t, col_t, size_t = _content_tags(obj, slot)
    noun, gender = lx.FR_NOUNS[obj.cls_key]
    g = 0 if gender == "m" else 1
    plain, elided = lx.FR_ARTICLE[gender]
    words = [_w(elided, ("det", slot), de_tag) if de_tag else _w(plain, ("det", slot))]
    if size:
        words.append(_w(lx.FR_SIZES[obj.size_key][g], size_t))
    return words + [_w(noun, cls_t), _w(lx.FR_COLOURS[obj.colour_key][g], col_t)]


def _np_cs(obj: SceneObject, slot: int, size: bool, case: str = "nom", **_) -> list[Word]:
    cls_t, col_t, size_t = _content_tags(obj, slot)
    gender, *forms = lx.CS_NOUNS[obj.cls_key]
    ending = lx.CS_ADJ_ENDING[(case, gender)]
    words = [_w(lx.CS_SIZES[obj.size_key] + ending, size_t)] if size else []
    return words + [_w(lx.CS_COLOURS[obj.colour_key] + ending, col_t),
                    _w(forms[lx.CS_CASES.index(case)], cls_t)]


def _np_ja(obj: SceneObject, slot: int, size: bool, **_) -> list[Word]:
    cls_t, col_t, size_t = _content_tags(obj, slot)
    pieces, _answer = lx.JA_COLOURS[obj.colour_key]
    words = [_w(lx.JA_SIZES[obj.size_key], size_t)] if size else []
    # "緑 の": only the colour noun carries the sense; の is the attributive particle.
    words += [_w(p, col_t) if i == 0 else _w(p) for i, p in enumerate(pieces)]
    return words + [_w(lx.JA_NOUNS[obj.cls_key][0], cls_t)]


def _np_zh(obj: SceneObject, slot: int, size: bool, **_) -> list[Word]:
    cls_t, col_t, size_t = _content_tags(obj, slot)
    noun, measure = lx.ZH_NOUNS[obj.cls_key]
    words = [_w("一" + measure, ("det", slot)), _w(lx.ZH_COLOURS[obj.colour_key], col_t), _w("的")]
    if size:
        words.append(_w(lx.ZH_SIZES[obj.size_key], size_t))
    return words + [_w(noun, cls_t)]


_NP = {"en": _np_en, "de": _np_de, "fr": _np_fr, "cs": _np_cs, "ja": _np_ja, "zh": _np_zh}


def _np(lang: str, scene: Scene, desc: Description, slot: int, **kw) -> list[Word]:
    mention = desc.mentions[slot]
    return _NP[lang](scene.objects[mention.obj], slot, mention.size, **kw)


# ----------------------------------------------------------------------------------------------- sentences
_CASE = {  # case of the NP after: ("there", "photo", "rel" object) in the inflecting languages
    "de": {"there": "acc", "photo": "dat"},
    "cs": {"there": "nom", "photo": "gen"},
}


def _position(lang: str, name: str) -> list[Word]:
    return _phrase(lx.POSITION_PHRASES[lang][name], f"pos:{name}", "p")


def _frame(lang: str, name: str) -> list[Word]:
    return _phrase(lx.FRAME_WORDS[lang][name], "", "f")


def _list_join(lang: str, nps: list[list[Word]]) -> list[Word]:
    """"A, B and C": commas between all but the last two (ja repeats と instead)."""
    and_word = _phrase(lx.FRAME_WORDS[lang]["and"], "", "l")
    sep = and_word if lang == "ja" else [_w("、" if lang == "zh" else ",")]
    out = list(nps[0])
    for i, np_words in enumerate(nps[1:], start=1):
        out += (and_word if i == len(nps) - 1 else sep) + np_words
    return out


def _render_western(lang: str, scene: Scene, d: Description) -> list[Word]:
    """en / de / fr / cs: subject-first order; cases and French "de" + article differ."""
    cases = _CASE.get(lang, {})
    if d.kind == "np":
        words = _frame(lang, "there") if d.there else []
        words += _np(lang, scene, d, 0, case=cases.get("there", "nom") if d.there else "nom")
        return words + (_position(lang, d.position) if d.position else [])
    if d.kind == "photo":
        return _frame(lang, d.photo_word) + _np(lang, scene, d, 0, case=cases.get("photo", "nom"),
                                                   de_tag=("of", "f"))
    if d.kind == "rel":
        rel = d.relation
        case = lx.DE_RELATION_CASE if lang == "de" else lx.CS_RELATION_CASE[rel] if lang == "cs" else "nom"
        de_tag = ("of", "r") if rel in lx.FR_RELATION_TAKES_DE else None
        return (_np(lang, scene, d, 0) + _phrase(lx.RELATION_PHRASES[lang][rel], f"rel:{rel}", "r")
                + _np(lang, scene, d, 1, case=case, de_tag=de_tag))
    return _list_join(lang, [_np(lang, scene, d, i) for i in range(len(d.mentions))])


def _ja_verb(scene: Scene, d: Description, slot: int, tagged: bool) -> list[Word]:
    """"が (一匹) いる/ある": いる for animals; the counter stands where English has "a"."""
    obj = scene.objects[d.mentions[slot].obj]
    verb = "いる" if obj.cls_key in lx.ANIMATE else "ある"
    counter = _w("一" + lx.JA_NOUNS[obj.cls_key][1], ("det", slot))
    return [_w("が")] + ([counter, _w(verb, ("there", "f"))] if tagged else [_w(verb)])


def _render_ja(scene: Scene, d: Description) -> list[Word]:
    """Head-final: places and reference objects come first, the verb last."""
    if d.kind == "np":
        pos = _position("ja", d.position) if d.position else []
        if d.there:
            return pos + ([_w("に")] if pos else []) + _np("ja", scene, d, 0) + _ja_verb(scene, d, 0, True)
        return pos + ([_w("の")] if pos else []) + _np("ja", scene, d, 0)
    if d.kind == "photo":
        return _np("ja", scene, d, 0) + _frame("ja", d.photo_word)
    if d.kind == "rel":
        rel = _phrase(lx.RELATION_PHRASES["ja"][d.relation], f"rel:{d.relation}", "r")
        of = _w("の", ("of", "r"))
        return (_np("ja", scene, d, 1) + [of] + rel + [_w("に")] + _np("ja", scene, d, 0)
                + _ja_verb(scene, d, 0, False))
    return _list_join("ja", [_np("ja", scene, d, i) for i in range(len(d.mentions))])


def _render_zh(scene: Scene, d: Description) -> list[Word]:
    """Numeral + measure word before the noun; locations as "在 X 的 左边"."""
    if d.kind == "np":
        pos = _position("zh", d.position) if d.position else []
        if d.there:
            return pos + _frame("zh", "there") + _np("zh", scene, d, 0)
        return _np("zh", scene, d, 0) + ([_w("在")] + pos if pos else [])
    if d.kind == "photo":
        return _frame("zh", d.photo_word) + [_w("有")] + _np("zh", scene, d, 0)
    if d.kind == "rel":
        rel = _phrase(lx.RELATION_PHRASES["zh"][d.relation], f"rel:{d.relation}", "r")
        return (_np("zh", scene, d, 0) + [_w("在")] + _np("zh", scene, d, 1) + [_w("的", ("of", "r"))] + rel)
    return _list_join("zh", [_np("zh", scene, d, i) for i in range(len(d.mentions))])


def render(lang: str, scene: Scene, desc: Description) -> list[Word]:
    """The words of ``desc`` in ``lang`` (one of :data:`lexicon.LANGS`), each with its alignment tags."""
    if lang == "ja":
        return _render_ja(scene, desc)
    if lang == "zh":
        return _render_zh(scene, desc)
    if lang not in lx.LANGS:
        raise ValueError(f"unknown demo language {lang!r}; expected one of {lx.LANGS}")
    return _render_western(lang, scene, desc)


def words_text(words: Sequence[Word]) -> str:
    """Whitespace-separated words (the form the .align indices refer to)."""
    return " ".join(text for text, _ in words)


def caption_text(lang: str, words: Sequence[Word]) -> str:
    """Natural text: ja/zh without spaces, commas attached to the word before them."""
    if lang in lx.NO_SPACE_LANGS:
        return "".join(text for text, _ in words)
    return words_text(words).replace(" ,", ",")


def align(src: Sequence[Word], tgt: Sequence[Word]) -> list[tuple[int, int]]:
    """Pharaoh-style (i, j) pairs: word i of ``src`` and word j of ``tgt`` share a tag."""
    return [(i, j) for i, (_, ti) in enumerate(src) for j, (_, tj) in enumerate(tgt) if ti & tj]


def sample_description(scene: Scene, rng: np.random.Generator) -> Description:
    """Draw what one caption says: a single object (maybe placed), a photo of one, a relation or a list."""
    n = len(scene.objects)
    kinds = KINDS if n >= 2 else KINDS[:2]
    probs = np.array([0.3, 0.2, 0.3, 0.2][:len(kinds)])
    kind = kinds[int(rng.choice(len(kinds), p=probs / probs.sum()))]
    n_mention = {"np": 1, "photo": 1, "rel": 2}.get(kind) or int(rng.integers(2, min(n, 3) + 1))
    objs = [int(i) for i in rng.choice(n, size=n_mention, replace=False)]
    mentions = tuple(Mention(obj=i, size=bool(rng.random() < 0.3)) for i in objs)
    if kind == "np":
        place = rng.random() < 0.6
        return Description(kind, mentions, there=bool(rng.random() < 0.5),
                           position=scene.objects[objs[0]].position if place else None)
    if kind == "photo":
        return Description(kind, mentions, photo_word=("photo", "picture")[int(rng.integers(2))])
    if kind == "rel":
        a, b = scene.objects[objs[0]], scene.objects[objs[1]]
        return Description(kind, mentions, relation=relation(a, b))
    return Description(kind, mentions)
