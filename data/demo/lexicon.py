"""Word tables of the demo corpus: object classes, colours, sizes, positions and relations in six languages.

Everything the grammars say comes from these tables, so the MRTM label files, the captions and the
alignments agree by construction. Classes are numbered 1..C in :data:`CLASS_KEYS` order (0 = background,
as in a detector's soft labels). The tables are immutable module constants (tuples / read-only mappings):
building them is cheap literal evaluation, no work happens at import time.

Grammar notes (what is modelled, because it is cheap):
  - en: a/an chosen by the next word; plural nouns for VQA count questions.
  - de: gender m/f/n; indefinite article and adjective endings in nominative, accusative and dative.
  - fr: gender m/f; colour adjectives after the noun and agreeing; petit/grand before it; "de un" -> "d'un".
  - cs: no articles; gender (m animate, m inanimate, f, n); nominative, genitive and instrumental forms of
    nouns and hard adjectives (-ý/-á/-é declension).
  - ja: colour adjectives (赤い) or noun + の (緑の); counters (一匹, 一冊, ...); いる for animals, ある else.
  - zh: numeral + measure word (一只, 一辆, ...); colour + 的.
"""
from __future__ import annotations

from types import MappingProxyType

LANGS = ("en", "de", "fr", "cs", "ja", "zh")
PAIR_LANGS = ("de", "fr", "cs", "ja", "zh")  # paired with English for VTLM
VQA_LANGS = ("en", "ja")
NO_SPACE_LANGS = frozenset({"ja", "zh"})

CLASS_KEYS = ("cube", "ball", "cup", "dog", "cat", "car", "chair", "book", "bottle", "tree", "bird", "hat",
              "lamp", "apple")
COLOUR_KEYS = ("red", "blue", "green", "yellow", "black", "white", "purple", "orange")
SIZE_KEYS = ("small", "large")
POSITION_KEYS = ("left", "right", "top", "bottom", "centre")
RELATION_KEYS = ("left", "right", "above", "below")
ANIMATE = frozenset({"dog", "cat", "bird"})

BACKGROUND = MappingProxyType({"en": "background", "de": "Hintergrund", "fr": "arrière-plan", "cs": "pozadí",
                               "ja": "背景", "zh": "背景"})

EN_NOUNS = MappingProxyType({k: (k, k + "s") for k in CLASS_KEYS})  # (singular, plural): all regular here

# German: (noun, gender). No weak nouns, so the singular noun has one form in every case we use.
DE_NOUNS = MappingProxyType({
    "cube": ("Würfel", "m"), "ball": ("Ball", "m"), "cup": ("Tasse", "f"), "dog": ("Hund", "m"),
    "cat": ("Katze", "f"), "car": ("Auto", "n"), "chair": ("Stuhl", "m"), "book": ("Buch", "n"),
    "bottle": ("Flasche", "f"), "tree": ("Baum", "m"), "bird": ("Vogel", "m"), "hat": ("Hut", "m"),
    "lamp": ("Lampe", "f"), "apple": ("Apfel", "m")})
DE_COLOURS = MappingProxyType({"red": "rot", "blue": "blau", "green": "grün", "yellow": "gelb",
                               "black": "schwarz", "white": "weiß", "purple": "violett",
                               "orange": "orangefarben"})
DE_SIZES = MappingProxyType({"small": "klein", "large": "groß"})
# (case, gender) -> (indefinite article, ending of an adjective after it: mixed declension)
DE_ARTICLE = MappingProxyType({
    ("nom", "m"): ("ein", "er"), ("nom", "f"): ("eine", "e"), ("nom", "n"): ("ein", "es"),
    ("acc", "m"): ("einen", "en"), ("acc", "f"): ("eine", "e"), ("acc", "n"): ("ein", "es"),
    ("dat", "m"): ("einem", "en"), ("dat", "f"): ("einer", "en"), ("dat", "n"): ("einem", "en")})

FR_NOUNS = MappingProxyType({
    "cube": ("cube", "m"), "ball": ("balle", "f"), "cup": ("tasse", "f"), "dog": ("chien", "m"),
    "cat": ("chat", "m"), "car": ("voiture", "f"), "chair": ("chaise", "f"), "book": ("livre", "m"),
    "bottle": ("bouteille", "f"), "tree": ("arbre", "m"), "bird": ("oiseau", "m"), "hat": ("chapeau", "m"),
    "lamp": ("lampe", "f"), "apple": ("pomme", "f")})
FR_COLOURS = MappingProxyType({  # (masculine, feminine)
    "red": ("rouge", "rouge"), "blue": ("bleu", "bleue"), "green": ("vert", "verte"),
    "yellow": ("jaune", "jaune"), "black": ("noir", "noire"), "white": ("blanc", "blanche"),
    "purple": ("violet", "violette"), "orange": ("orange", "orange")})
FR_SIZES = MappingProxyType({"small": ("petit", "petite"), "large": ("grand", "grande")})
FR_ARTICLE = MappingProxyType({"m": ("un", "d'un"), "f": ("une", "d'une")})  # (plain, after "de")

# Czech: (gender, nominative, genitive, instrumental). Genders: ma (masc. animate), mi (masc. inanimate), f, n.
CS_NOUNS = MappingProxyType({
    "cube": ("f", "kostka", "kostky", "kostkou"), "ball": ("mi", "míč", "míče", "míčem"),
    "cup": ("mi", "hrnek", "hrnku", "hrnkem"), "dog": ("ma", "pes", "psa", "psem"),
    "cat": ("f", "kočka", "kočky", "kočkou"), "car": ("n", "auto", "auta", "autem"),
    "chair": ("f", "židle", "židle", "židlí"), "book": ("f", "kniha", "knihy", "knihou"),
    "bottle": ("f", "láhev", "láhve", "láhví"), "tree": ("mi", "strom", "stromu", "stromem"),
    "bird": ("ma", "pták", "ptáka", "ptákem"), "hat": ("mi", "klobouk", "klobouku", "kloboukem"),
    "lamp": ("f", "lampa", "lampy", "lampou"), "apple": ("n", "jablko", "jablka", "jablkem")})
CS_CASES = ("nom", "gen", "ins")
CS_COLOURS = MappingProxyType({"red": "červen", "blue": "modr", "green": "zelen", "yellow": "žlut",
                               "black": "čern", "white": "bíl", "purple": "fialov", "orange": "oranžov"})
CS_SIZES = MappingProxyType({"small": "mal", "large": "velk"})
# Hard adjective endings per (case, gender).
CS_ADJ_ENDING = MappingProxyType({
    ("nom", "ma"): "ý", ("nom", "mi"): "ý", ("nom", "f"): "á", ("nom", "n"): "é",
    ("gen", "ma"): "ého", ("gen", "mi"): "ého", ("gen", "f"): "é", ("gen", "n"): "ého",
    ("ins", "ma"): "ým", ("ins", "mi"): "ým", ("ins", "f"): "ou", ("ins", "n"): "ým"})

# Japanese: (noun, counter). Counters follow the usual classifier: 匹 small animals, 羽 birds, 台 machines...
JA_NOUNS = MappingProxyType({
    "cube": ("立方体", "個"), "ball": ("ボール", "個"), "cup": ("カップ", "個"), "dog": ("犬", "匹"),
    "cat": ("猫", "匹"), "car": ("車", "台"), "chair": ("椅子", "脚"), "book": ("本", "冊"),
    "bottle": ("瓶", "本"), "tree": ("木", "本"), "bird": ("鳥", "羽"), "hat": ("帽子", "個"),
    "lamp": ("ランプ", "台"), "apple": ("りんご", "個")})
# Attributive colour words as segmented pieces (i-adjective, or noun + の), and the bare colour noun that
# answers "何色ですか".
JA_COLOURS = MappingProxyType({
    "red": (("赤い",), "赤"), "blue": (("青い",), "青"), "green": (("緑", "の"), "緑"),
    "yellow": (("黄色い",), "黄色"), "black": (("黒い",), "黒"), "white": (("白い",), "白"),
    "purple": (("紫", "の"), "紫"), "orange": (("オレンジ", "の"), "オレンジ")})
JA_SIZES = MappingProxyType({"small": "小さい", "large": "大きい"})
JA_NUMERALS = ("ゼロ", "一", "二", "三", "四", "五")

# Chinese: (noun, measure word).
ZH_NOUNS = MappingProxyType({
    "cube": ("立方体", "个"), "ball": ("球", "个"), "cup": ("杯子", "个"), "dog": ("狗", "只"),
    "cat": ("猫", "只"), "car": ("汽车", "辆"), "chair": ("椅子", "把"), "book": ("书", "本"),
    "bottle": ("瓶子", "个"), "tree": ("树", "棵"), "bird": ("鸟", "只"), "hat": ("帽子", "顶"),
    "lamp": ("灯", "盏"), "apple": ("苹果", "个")})
ZH_COLOURS = MappingProxyType({"red": "红色", "blue": "蓝色", "green": "绿色", "yellow": "黄色",
                               "black": "黑色", "white": "白色", "purple": "紫色", "orange": "橙色"})
ZH_SIZES = MappingProxyType({"small": "小", "large": "大"})

# Phrases: each is a tuple of (word, sense) where sense names the part of the concept a word carries
# (None = a function word that aligns with nothing). Words of two languages that share a sense are aligned.
POSITION_PHRASES = MappingProxyType({
    "en": {"left": (("on", None), ("the", None), ("left", "head")),
           "right": (("on", None), ("the", None), ("right", "head")),
           "top": (("at", None), ("the", None), ("top", "head")),
           "bottom": (("at", None), ("the", None), ("bottom", "head")),
           "centre": (("in", None), ("the", None), ("middle", "head"))},
    "de": {"left": (("links", "head"), ("im", None), ("Bild", None)),
           "right": (("rechts", "head"), ("im", None), ("Bild", None)),
           "top": (("oben", "head"), ("im", None), ("Bild", None)),
           "bottom": (("unten", "head"), ("im", None), ("Bild", None)),
           "centre": (("in", None), ("der", None), ("Mitte", "head"))},
    "fr": {"left": (("à", None), ("gauche", "head")), "right": (("à", None), ("droite", "head")),
           "top": (("en", None), ("haut", "head")), "bottom": (("en", None), ("bas", "head")),
           "centre": (("au", None), ("centre", "head"))},
    "cs": {"left": (("vlevo", "head"),), "right": (("vpravo", "head"),), "top": (("nahoře", "head"),),
           "bottom": (("dole", "head"),), "centre": (("uprostřed", "head"),)},
    "ja": {"left": (("左", "head"),), "right": (("右", "head"),), "top": (("上", "head"),),
           "bottom": (("下", "head"),), "centre": (("真ん中", "head"),)},
    "zh": {"left": (("左边", "head"),), "right": (("右边", "head"),), "top": (("上面", "head"),),
           "bottom": (("下面", "head"),), "centre": (("中间", "head"),)},
})

# Relation words (without the object that follows). "of" marks the preposition that links to the second
# object; in French it merges with the article ("d'un"), so the article word carries both senses.
RELATION_PHRASES = MappingProxyType({
    "en": {"left": (("to", None), ("the", None), ("left", "head"), ("of", "of")),
           "right": (("to", None), ("the", None), ("right", "head"), ("of", "of")),
           "above": (("above", "head"),), "below": (("below", "head"),)},
    "de": {"left": (("links", "head"), ("von", "of")), "right": (("rechts", "head"), ("von", "of")),
           "above": (("über", "head"),), "below": (("unter", "head"),)},
    "fr": {"left": (("à", None), ("gauche", "head")), "right": (("à", None), ("droite", "head")),
           "above": (("au-dessus", "head"),), "below": (("sous", "head"),)},
    "cs": {"left": (("vlevo", "head"), ("od", "of")), "right": (("vpravo", "head"), ("od", "of")),
           "above": (("nad", "head"),), "below": (("pod", "head"),)},
    "ja": {"left": (("左", "head"),), "right": (("右", "head"),), "above": (("上", "head"),),
           "below": (("下", "head"),)},
    "zh": {"left": (("左边", "head"),), "right": (("右边", "head"),), "above": (("上面", "head"),),
           "below": (("下面", "head"),)},
})
# French relations whose object is introduced by "de" (merged with the article); "sous" takes none.
FR_RELATION_TAKES_DE = frozenset({"left", "right", "above"})
DE_RELATION_CASE = "dat"  # von / über / unter + dative
CS_RELATION_CASE = MappingProxyType({"left": "gen", "right": "gen", "above": "ins", "below": "ins"})

# Frame words: "a photo of", "there is", "and". Sense names are shared across languages.
FRAME_WORDS = MappingProxyType({
    "en": {"photo": (("a", "a"), ("photo", "photo"), ("of", "of")),
           "picture": (("a", "a"), ("picture", "photo"), ("of", "of")),
           "there": (("there", "there"), ("is", "there")), "and": (("and", "and"),)},
    "de": {"photo": (("ein", "a"), ("Foto", "photo"), ("von", "of")),
           "picture": (("ein", "a"), ("Bild", "photo"), ("von", "of")),
           "there": (("es", "there"), ("gibt", "there")), "and": (("und", "and"),)},
    "fr": {"photo": (("une", "a"), ("photo", "photo")), "picture": (("une", "a"), ("image", "photo")),
           "there": (("il", "there"), ("y", "there"), ("a", "there")), "and": (("et", "and"),)},
    "cs": {"photo": (("fotka", "photo"),), "picture": (("obrázek", "photo"),),
           "there": (("na", None), ("obrázku", None), ("je", "there")), "and": (("a", "and"),)},
    "ja": {"photo": (("の", "of"), ("写真", "photo")), "picture": (("の", "of"), ("画像", "photo")),
           "there": (("が", None),), "and": (("と", "and"),)},
    "zh": {"photo": (("照片", "photo"), ("里", None)), "picture": (("图片", "photo"), ("里", None)),
           "there": (("有", "there"),), "and": (("和", "and"),)},
})


# ----------------------------------------------------------------------------------------------- senses
def _content_forms(lang: str) -> list[tuple[str, str]]:
    """(surface form, sense) of every inflected class noun, colour and size word of ``lang``."""
    if lang == "en":
        return ([(f, f"class:{k}") for k, forms in EN_NOUNS.items() for f in forms]
                + [(k, f"colour:{k}") for k in COLOUR_KEYS] + [(k, f"size:{k}") for k in SIZE_KEYS])
    if lang == "de":
        endings = {e for _, e in DE_ARTICLE.values()}
        return ([(n, f"class:{k}") for k, (n, _) in DE_NOUNS.items()]
                + [(s + e, f"colour:{k}") for k, s in DE_COLOURS.items() for e in endings]
                + [(s + e, f"size:{k}") for k, s in DE_SIZES.items() for e in endings])
    if lang == "fr":
        return ([(n, f"class:{k}") for k, (n, _) in FR_NOUNS.items()]
                + [(f, f"colour:{k}") for k, forms in FR_COLOURS.items() for f in forms]
                + [(f, f"size:{k}") for k, forms in FR_SIZES.items() for f in forms])
    if lang == "cs":
        endings = set(CS_ADJ_ENDING.values())
        return ([(f, f"class:{k}") for k, (_, *forms) in CS_NOUNS.items() for f in forms]
                + [(s + e, f"colour:{k}") for k, s in CS_COLOURS.items() for e in endings]
                + [(s + e, f"size:{k}") for k, s in CS_SIZES.items() for e in endings])
    nouns, colours, sizes = (JA_NOUNS, {k: v[0][0] for k, v in JA_COLOURS.items()}, JA_SIZES) if lang == "ja" \
        else (ZH_NOUNS, ZH_COLOURS, ZH_SIZES)
    return ([(n, f"class:{k}") for k, (n, _) in nouns.items()] + [(c, f"colour:{k}") for k, c in colours.items()]
            + [(s, f"size:{k}") for k, s in sizes.items()])


def _function_forms(lang: str) -> list[tuple[str, str]]:
    """(surface form, sense) of articles / counters and of the named parts of position, relation, frame phrases."""
    dets = {"en": ["a", "an"], "de": [a for a, _ in DE_ARTICLE.values()],
            "fr": [a for pair in FR_ARTICLE.values() for a in pair],
            "ja": ["一" + c for _, c in JA_NOUNS.values()], "zh": ["一" + m for _, m in ZH_NOUNS.values()]}
    forms = [(d, "det") for d in dets.get(lang, [])]
    forms += [(pair[1], "of") for pair in FR_ARTICLE.values()] if lang == "fr" else []
    forms += [("いる", "there"), ("ある", "there"), ("の", "of")] if lang == "ja" else []
    forms += [("的", "of")] if lang == "zh" else []
    for table, prefix in ((POSITION_PHRASES, "pos"), (RELATION_PHRASES, "rel")):
        for name, phrase in table[lang].items():
            forms += [(w, f"{prefix}:{name}" if part == "head" else part) for w, part in phrase if part]
    forms += [(w, part) for phrase in FRAME_WORDS[lang].values() for w, part in phrase if part]
    return forms


def surface_senses(lang: str) -> dict[str, frozenset[str]]:
    """Every word the grammars can write in ``lang`` that carries meaning, with the senses it can have.

    Senses are shared across languages ("class:cube", "colour:red", "det", "rel:left", "of", "photo"...), so
    two aligned words are translations exactly when their sense sets intersect. Built from the tables on
    each call (cheap), not at import time.
    """
    senses: dict[str, set[str]] = {}
    for form, sense in _content_forms(lang) + _function_forms(lang):
        senses.setdefault(form, set()).add(sense)
    return {form: frozenset(s) for form, s in senses.items()}
