"""Raw demo files: per-image .npz features, caption / paired / VQA JSON lines, alignments and label files.

Layout under ``raw_dir`` (what a user with real data would hold before preprocessing)::

    npz/demo_imgs/demo_imgs_000000.npz ...    float32 features (n, D), norm_bb (n, 6), conf (n, 1),
                                              soft_labels (n, C+1), image_h, image_w
    captions_{split}.jsonl                    {id, img_fname, lang, caption}; ja/zh rows also carry ``words``
                                              (the caption segmented by spaces, for the tokenizer)
    paired_{split}_en-{x}.jsonl + .align      {id, img_fname, lang1, lang2, caption1, caption2}; Pharaoh lines
    vqa_{split}_{lang}.jsonl                  {question_id, img_fname, lang, question, qtype, answers[10]};
                                              ja rows also carry ``words`` (the question segmented)
    scenes_{split}.jsonl                      ground truth per image (objects), for tests and inspection
    labels/objects_vocab_{lang}.txt, labels/background.json

Every image ``i`` draws from its own generators seeded by ``(seed, stream, i)``, so the files depend only on
the seed and the sizes, not on the order of generation.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.demo import grammar, lexicon as lx, vqa
from data.demo.scene import FEAT_DIM, Prototypes, Scene, make_prototypes, sample_scene, scene_regions
from utils.errors import ConfigError

SPLITS = ("train", "val", "test")
IMG_SET = "demo_imgs"
# Generator streams: one per kind of content, so adding e.g. more questions leaves captions unchanged.
_SCENE, _REGIONS, _CAPTIONS, _PAIRED, _VQA = range(5)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and seed of a demo corpus (all CLI options of ``scripts/make_demo_data.py``)."""

    seed: int = 42
    n_train: int = 1000
    n_val: int = 100
    n_test: int = 100
    captions_per_image: int = 4  # per language
    paired_per_image: int = 1  # per English-X pair
    questions_per_image: int = 4  # per VQA language (the same questions in en and ja)
    feat_dim: int = FEAT_DIM

    def __post_init__(self):
        for name in ("n_train", "n_val", "n_test", "captions_per_image", "paired_per_image",
                     "questions_per_image", "feat_dim"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"demo corpus option {name!r} must be an integer >= 1, got {getattr(self, name)!r}")

    def split_indices(self) -> dict[str, range]:
        """Global image indices of each split (disjoint, train first)."""
        a, b = self.n_train, self.n_train + self.n_val
        return {"train": range(0, a), "val": range(a, b), "test": range(b, b + self.n_test)}


def img_fname(index: int) -> str:
    return f"{IMG_SET}_{index:06d}.npz"


def make_scene(cfg: DemoConfig, index: int) -> Scene:
    return sample_scene(index, img_fname(index), np.random.default_rng((cfg.seed, _SCENE, index)))


def make_regions(cfg: DemoConfig, scene: Scene, protos: Prototypes) -> dict[str, np.ndarray]:
    return scene_regions(scene, protos, np.random.default_rng((cfg.seed, _REGIONS, scene.index)))


def image_captions(cfg: DemoConfig, scene: Scene, lang: str) -> list[list[grammar.Word]]:
    """``captions_per_image`` captions of one image in ``lang``, each from its own description."""
    rng = np.random.default_rng((cfg.seed, _CAPTIONS, scene.index, lx.LANGS.index(lang)))
    return [grammar.render(lang, scene, grammar.sample_description(scene, rng))
            for _ in range(cfg.captions_per_image)]


def image_pairs(cfg: DemoConfig, scene: Scene, lang: str) -> list[tuple[list, list]]:
    """(English words, ``lang`` words) renderings of the same descriptions."""
    rng = np.random.default_rng((cfg.seed, _PAIRED, scene.index, lx.LANGS.index(lang)))
    descs = [grammar.sample_description(scene, rng) for _ in range(cfg.paired_per_image)]
    return [(grammar.render("en", scene, d), grammar.render(lang, scene, d)) for d in descs]


def image_questions(cfg: DemoConfig, scene: Scene) -> list[tuple[vqa.Question, list]]:
    """Questions with their 10 annotator answers (concepts), shared by en and ja."""
    rng = np.random.default_rng((cfg.seed, _VQA, scene.index))
    return [(q, vqa.annotate(q, rng)) for q in vqa.sample_questions(scene, cfg.questions_per_image, rng)]


# ----------------------------------------------------------------------------------------------- writing
def _write_jsonl(path: Path, rows: Iterator[dict], langs: Counter | None = None) -> int:
    """Write rows as JSON lines; count them, and per ``lang`` field into ``langs`` when given."""
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
            if langs is not None:
                langs[row["lang"]] += 1
    return n


def write_labels(label_dir: Path) -> None:
    """MRTM label files: class names 1..C per language (no background line) and ``background.json``."""
    label_dir.mkdir(parents=True, exist_ok=True)
    names = {
        "en": [lx.EN_NOUNS[k][0] for k in lx.CLASS_KEYS], "de": [lx.DE_NOUNS[k][0] for k in lx.CLASS_KEYS],
        "fr": [lx.FR_NOUNS[k][0] for k in lx.CLASS_KEYS], "cs": [lx.CS_NOUNS[k][1] for k in lx.CLASS_KEYS],
        "ja": [lx.JA_NOUNS[k][0] for k in lx.CLASS_KEYS], "zh": [lx.ZH_NOUNS[k][0] for k in lx.CLASS_KEYS]}
    for lang, words in names.items():
        (label_dir / f"objects_vocab_{lang}.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    (label_dir / "background.json").write_text(json.dumps(dict(lx.BACKGROUND), ensure_ascii=False, indent=1),
                                               encoding="utf-8")


def _caption_rows(cfg: DemoConfig, scenes: list[Scene]) -> Iterator[dict]:
    for lang in lx.LANGS:
        for scene in scenes:
            for k, words in enumerate(image_captions(cfg, scene, lang)):
                row = {"id": f"cap_{lang}_{scene.index:06d}_{k}", "img_fname": scene.img_fname, "lang": lang,
                       "caption": grammar.caption_text(lang, words)}
                if lang in lx.NO_SPACE_LANGS:
                    row["words"] = grammar.words_text(words)
                yield row


def write_paired(cfg: DemoConfig, scenes: list[Scene], lang: str, jsonl: Path) -> int:
    """Paired JSONL and its ``.align`` file (same stem); returns the number of pairs."""
    n = 0
    with jsonl.open("w", encoding="utf-8") as fj, jsonl.with_suffix(".align").open("w", encoding="utf-8") as fa:
        for scene in scenes:
            for k, (en, xx) in enumerate(image_pairs(cfg, scene, lang)):
                row = {"id": f"par_en-{lang}_{scene.index:06d}_{k}", "img_fname": scene.img_fname,
                       "lang1": "en", "lang2": lang, "caption1": grammar.words_text(en),
                       "caption2": grammar.words_text(xx)}
                fj.write(json.dumps(row, ensure_ascii=False) + "\n")
                fa.write(" ".join(f"{i}-{j}" for i, j in grammar.align(en, xx)) + "\n")
                n += 1
    return n


def _vqa_rows(cfg: DemoConfig, scenes: list[Scene], lang: str, qtypes: Counter) -> Iterator[dict]:
    for scene in scenes:
        for k, (q, answers) in enumerate(image_questions(cfg, scene)):
            qtypes[q.qtype] += 1
            row = {"question_id": f"vqa_{lang}_{scene.index:06d}_{k}", "img_fname": scene.img_fname,
                   "lang": lang, "question": vqa.question_text(lang, q), "qtype": q.qtype,
                   "answers": [vqa.answer_text(lang, q, a) for a in answers]}
            if lang in lx.NO_SPACE_LANGS:
                row["words"] = " ".join(vqa.question_words(lang, q))
            yield row


def _scene_row(scene: Scene, split: str) -> dict:
    return {"img_fname": scene.img_fname, "split": split, "width": scene.width, "height": scene.height,
            "objects": [{"class": o.cls_key, "colour": o.colour_key, "size": o.size_key, "row": o.row,
                         "col": o.col, "box": [round(v, 6) for v in o.box]} for o in scene.objects]}


def _write_images(cfg: DemoConfig, scenes: list[Scene], npz_dir: Path, progress: bool) -> list[int]:
    """One .npz per image (``np.savez``, uncompressed like detector dumps); returns region counts."""
    from tqdm import tqdm

    protos = make_prototypes(cfg.seed, cfg.feat_dim)
    counts = []
    for scene in tqdm(scenes, desc="demo images", unit=" img", disable=not progress):
        regions = make_regions(cfg, scene, protos)
        np.savez(npz_dir / scene.img_fname, **regions)
        counts.append(len(regions["conf"]))
    return counts


#: Marks word boundaries in the tokenizer's training text (SentencePiece ``pretokenization_delimiter``): pieces
#: never span it, and it is dropped, so it never reaches the vocabulary or the encoded text.
WORD_DELIMITER = "\u241f"


def corpus_texts(raw_dir: str | Path) -> list[str]:
    """All text of the raw files (captions, paired sides, questions, answers, label words): tokenizer input.

    ja/zh text is given segmented, its words joined by :data:`WORD_DELIMITER`. Trained on the unsegmented
    sentences of this small, repetitive corpus, a 1000-piece Unigram model spends its vocabulary on whole
    phrases ("棵黄色的树" = "<measure word> yellow tree" as one piece) and then splits German words into letters;
    XLM-R's tokenizer, trained on 2.5 TB, keeps Chinese and Japanese pieces at word or character level. With
    the boundaries marked the demo tokenizer does the same, and an unsegmented caption is encoded into the
    same word pieces as its segmented form in the paired files (see ``UC2Tokenizer.encode_words``).
    """
    raw_dir = Path(raw_dir)
    texts = []

    def segmented(text: str) -> str:
        return WORD_DELIMITER.join(text.split())

    for path in sorted(raw_dir.glob("*.jsonl")):
        if path.name.startswith("scenes_"):
            continue
        with path.open(encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if "words" in row:  # a ja/zh caption or question with its segmentation
                    texts.append(segmented(row["words"]))
                else:
                    texts += [row[k] for k in ("caption", "question", "caption1") if k in row]
                if "caption2" in row:
                    no_space = row.get("lang2") in lx.NO_SPACE_LANGS
                    texts.append(segmented(row["caption2"]) if no_space else row["caption2"])
                texts += sorted(set(row.get("answers", ())))
    for path in sorted((raw_dir / "labels").glob("objects_vocab_*.txt")):
        texts += path.read_text(encoding="utf-8").split("\n")
    texts += list(lx.BACKGROUND.values())
    return [t for t in texts if t.strip()]


def write_raw(raw_dir: str | Path, cfg: DemoConfig, progress: bool = True) -> dict:
    """Write every raw file of the corpus into ``raw_dir`` (which must be empty or absent).

    Returns raw statistics: images, captions, paired and VQA counts per split and language, VQA question
    types, and regions per image (``regions`` = list of counts in image order, for the caller to summarise).
    """
    raw_dir = Path(raw_dir)
    npz_dir = raw_dir / "npz" / IMG_SET
    npz_dir.mkdir(parents=True, exist_ok=True)
    write_labels(raw_dir / "labels")
    stats: dict = {"images": {}, "captions": {}, "paired": {}, "vqa": {}, "vqa_types": {}, "regions": []}
    for split, indices in cfg.split_indices().items():
        scenes = [make_scene(cfg, i) for i in indices]
        stats["images"][split] = len(scenes)
        stats["regions"] += _write_images(cfg, scenes, npz_dir, progress)
        _write_jsonl(raw_dir / f"scenes_{split}.jsonl", (_scene_row(s, split) for s in scenes))
        langs = Counter()
        _write_jsonl(raw_dir / f"captions_{split}.jsonl", _caption_rows(cfg, scenes), langs)
        stats["captions"][split] = dict(langs)
        stats["paired"][split] = {f"en-{x}": write_paired(cfg, scenes, x, raw_dir / f"paired_{split}_en-{x}.jsonl")
                                  for x in lx.PAIR_LANGS}
        qtypes = Counter()  # the same questions in every VQA language: count the types in the first
        stats["vqa"][split] = {lang: _write_jsonl(raw_dir / f"vqa_{split}_{lang}.jsonl",
                                                  _vqa_rows(cfg, scenes, lang, qtypes if i == 0 else Counter()))
                               for i, lang in enumerate(lx.VQA_LANGS)}
        stats["vqa_types"][split] = dict(sorted(qtypes.items()))
    return stats
