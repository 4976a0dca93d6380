"""Masking statistics and invariants of MLM, region masking, VTLM co-masking and MRTM targets.

In-memory stand-ins for TxtDb/ImgDb keep these many-draw tests fast; tests/test_tasks.py runs the same
objectives on real databases written to tmp_path.
"""
import numpy as np
import pytest
import torch

from data.labels import LabelVocab
from tasks.base import ExampleSource, ObjectiveSettings, mask_regions
from tasks.mlm import MlmObjective, mask_tokens
from tasks.mrtm import MrtmObjective
from tasks.vtlm import VtlmObjective, co_mask

MASK = 99_999
META = {"CLS": 0, "SEP": 2, "MASK": MASK, "v_range": [5, 90_000]}


class FakeTxtDb:
    def __init__(self, examples: dict, meta=META):
        self.examples, self.meta = examples, meta
        self.ids = list(examples)
        self.lens = [len(ex["input_ids"]) for ex in examples.values()]
        self.txt2img = {i: ex["img_fname"] for i, ex in examples.items()}

    def __getitem__(self, txt_id):
        return self.examples[txt_id]


class FakeImgDb:
    def __init__(self, images: dict):
        self.images = images
        self.name2nbb = {k: len(v["features"]) for k, v in images.items()}

    def get(self, fname):
        return self.images[fname]


def fake_image(n, dim=4, classes=6, seed=0):
    rng = np.random.default_rng(seed)
    return {"features": rng.random((n, dim), dtype=np.float32), "norm_bb": rng.random((n, 6), dtype=np.float32),
            "soft_labels": rng.dirichlet(np.ones(classes), size=n).astype(np.float32)}


def source_of(examples, n_regions=5, meta=META):
    images = {ex["img_fname"]: fake_image(n_regions, seed=k) for k, ex in enumerate(examples.values())}
    return ExampleSource([(FakeTxtDb(examples, meta), FakeImgDb(images))])


# --- MLM -----------------------------------------------------------------------------------------

def test_mlm_statistics_15_percent_and_80_10_10():
    ids = np.arange(100, 300)  # 200 tokens, far from MASK and unlikely to be re-drawn at random
    chosen = mask_n = rand_n = keep_n = 0
    for seed in range(300):
        masked, labels = mask_tokens(ids, 0.15, META, np.random.default_rng(seed))
        target = labels != -1
        assert (labels[target] == ids[target]).all()
        assert (masked[~target] == ids[~target]).all()  # non-targets untouched
        chosen += target.sum()
        mask_n += (masked[target] == MASK).sum()
        keep_n += (masked[target] == ids[target]).sum()
        rand_n += ((masked[target] != MASK) & (masked[target] != ids[target])).sum()
    assert abs(chosen / (300 * 200) - 0.15) < 0.01
    assert abs(mask_n / chosen - 0.8) < 0.02
    assert abs(rand_n / chosen - 0.1) < 0.02
    assert abs(keep_n / chosen - 0.1) < 0.02


def test_mlm_random_ids_come_from_v_range():
    meta = {**META, "v_range": [500, 510]}
    masked, labels = mask_tokens(np.arange(100, 300), 1.0, meta, np.random.default_rng(0))
    replaced = masked[(masked != MASK) & (masked != np.arange(100, 300))]
    assert len(replaced) > 5 and ((replaced >= 500) & (replaced < 510)).all()


def test_mlm_always_at_least_one_target_on_short_captions():
    for seed in range(200):
        _, labels = mask_tokens([7, 8], 0.15, META, np.random.default_rng(seed))
        assert (labels != -1).sum() >= 1


def test_mlm_example_same_seed_same_masks_and_wrapped_labels():
    source = source_of({"a": {"input_ids": list(range(100, 140)), "img_fname": "i0"}})
    mlm = MlmObjective(ObjectiveSettings())
    one = mlm.build_example(source, 0, np.random.default_rng(123))
    two = mlm.build_example(source, 0, np.random.default_rng(123))
    other = mlm.build_example(source, 0, np.random.default_rng(124))
    assert torch.equal(one["input_ids"], two["input_ids"]) and torch.equal(one["txt_labels"], two["txt_labels"])
    assert not torch.equal(one["txt_labels"], other["txt_labels"])
    assert one["input_ids"][0] == 0 and one["input_ids"][-1] == 2  # <s> ... </s>
    assert one["txt_labels"][0] == -1 and one["txt_labels"][-1] == -1
    assert len(one["input_ids"]) == len(one["txt_labels"]) == 42
    assert one["position_ids"].tolist() == list(range(2, 44))


# --- ITM -----------------------------------------------------------------------------------------

def test_itm_negatives_are_other_images_with_the_configured_rate():
    from tasks.itm import ItmObjective
    examples = {f"c{k}": {"input_ids": [5, 6, 7], "img_fname": f"i{k}"} for k in range(4)}
    source = source_of(examples)
    itm = ItmObjective(ObjectiveSettings(itm_neg_prob=0.3))
    own = source.image(0, "i1")["img_feat"]
    negatives, drawn = 0, set()
    for seed in range(400):
        ex = itm.build_example(source, 1, np.random.default_rng(seed))
        same = torch.equal(ex["img_feat"], own)
        assert same == (ex["target"] == 1)
        negatives += ex["target"] == 0
        if ex["target"] == 0:
            drawn.add(next(k for k in range(4) if torch.equal(ex["img_feat"], source.image(0, f"i{k}")["img_feat"])))
    assert abs(negatives / 400 - 0.3) < 0.06 and drawn == {0, 2, 3}
    again = itm.build_example(source, 1, np.random.default_rng(7))
    assert torch.equal(again["img_feat"], itm.build_example(source, 1, np.random.default_rng(7))["img_feat"])


def test_source_names_a_missing_image():
    from utils.errors import DataError
    txt = FakeTxtDb({"c0": {"input_ids": [5], "img_fname": "gone.npz"}})
    with pytest.raises(DataError, match="no image 'gone.npz'"):
        ExampleSource([(txt, FakeImgDb({"i0": fake_image(3)}))])


# --- regions -------------------------------------------------------------------------------------

def test_region_masking_statistics_and_at_least_one():
    total = sum(mask_regions(100, 0.15, np.random.default_rng(s)).sum().item() for s in range(400))
    assert abs(total / (400 * 100) - 0.15) < 0.01
    assert all(mask_regions(3, 0.15, np.random.default_rng(s)).any() for s in range(200))


# --- VTLM co-masking -----------------------------------------------------------------------------

# EN: 5 words, word 1 has three sub-tokens; X: 4 words, word 2 has two sub-tokens.
IDS1 = np.arange(1000, 1007)
WORDS1 = [np.array(p) for p in ([0], [1, 2, 3], [4], [5], [6])]
IDS2 = np.arange(2000, 2005)
WORDS2 = [np.array(p) for p in ([0], [1], [2, 3], [4])]
ALIGN = {0: [1], 1: [0, 2], 3: [3]}  # EN words 2 and 4 have no alignment


def _action(masked, original):
    return np.where(masked == MASK, 0, np.where(masked == original, 2, 1))


def test_co_masking_masks_exactly_the_aligned_tokens_with_the_same_decision():
    hits_unaligned = 0
    for seed in range(300):
        m1, l1, m2, l2 = co_mask(IDS1, IDS2, WORDS1, WORDS2, ALIGN, 0.3, META, np.random.default_rng(seed))
        chosen = [w for w, pos in enumerate(WORDS1) if (l1[pos] != -1).any()]
        assert chosen, "at least one English word is masked"
        for w in chosen:
            assert (l1[WORDS1[w]] != -1).all()  # whole word
        expected2 = sorted(p for w in chosen for v in ALIGN.get(w, []) for p in WORDS2[v])
        assert np.flatnonzero(l2 != -1).tolist() == expected2
        assert (l2[l2 != -1] == IDS2[l2 != -1]).all() and (m2[l2 == -1] == IDS2[l2 == -1]).all()
        for w in chosen:
            action = set(_action(m1[WORDS1[w]], IDS1[WORDS1[w]]))
            assert len(action) == 1
            for v in ALIGN.get(w, []):
                assert set(_action(m2[WORDS2[v]], IDS2[WORDS2[v]])) == action
        hits_unaligned += 2 in chosen or 4 in chosen
    assert hits_unaligned > 50  # unaligned words were drawn often, and masked nothing on the X side


def paired_source():
    fields = {"input_ids": [*IDS1.tolist(), 2, 0, *IDS2.tolist()], "input_ids_lang1": IDS1.tolist(),
              "input_ids_lang2": IDS2.tolist(), "word2ids_lang1": [p.tolist() for p in WORDS1],
              "word2ids_lang2": [p.tolist() for p in WORDS2],
              "lang1_lang2_walign": {str(k): v for k, v in ALIGN.items()}, "img_fname": "i0"}
    return source_of({"p0": fields})


def test_vtlm_example_layout_positions_and_full_mode():
    vtlm = VtlmObjective(ObjectiveSettings(vtlm_mask_mode="full"))
    ex = vtlm.build_example(paired_source(), 0, np.random.default_rng(5))
    ids, labels = ex["input_ids"], ex["txt_labels"]
    assert len(ids) == 7 + 5 + 4
    assert ids[[0, 8, 9, 15]].tolist() == [0, 2, 0, 2]  # <s> EN </s> <s> X </s>
    assert ex["position_ids"].tolist() == [*range(2, 11), *range(2, 9)]
    assert labels[[0, 8, 9, 15]].tolist() == [-1, -1, -1, -1]
    en_words = [w for w, pos in enumerate(WORDS1) if (labels[1 + pos] != -1).any()]
    x_targets = np.flatnonzero(labels[10:15].numpy() != -1).tolist()
    assert x_targets == sorted(p for w in en_words for v in ALIGN.get(w, []) for p in WORDS2[v])


def test_vtlm_mix_mode_masks_some_examples_independently():
    vtlm = VtlmObjective(ObjectiveSettings(vtlm_mask_mode="mix"))
    source, unexplained = paired_source(), 0
    for seed in range(200):
        labels = vtlm.build_example(source, 0, np.random.default_rng(seed))["txt_labels"]
        en_words = [w for w, pos in enumerate(WORDS1) if (labels[1 + pos] != -1).any()]
        aligned = sorted(p for w in en_words for v in ALIGN.get(w, []) for p in WORDS2[v])
        unexplained += np.flatnonzero(labels[10:15].numpy() != -1).tolist() != aligned
    assert 70 < unexplained < 130  # about half (100 +- 7) are masked independently


def test_vtlm_bad_mode_and_bad_word_positions_raise():
    from utils.errors import ConfigError
    from utils.errors import DataError
    with pytest.raises(ConfigError, match="vtlm_mask_mode"):
        VtlmObjective(ObjectiveSettings(vtlm_mask_mode="half"))
    source = paired_source()
    source.parts[0][0].examples["p0"]["word2ids_lang2"] = [[0], [1], [2, 9], [4]]
    with pytest.raises(DataError, match=r"p0: word2ids_lang2\[2\]"):
        VtlmObjective(ObjectiveSettings(vtlm_mask_mode="full")).build_example(source, 0, np.random.default_rng(0))


# --- MRTM targets --------------------------------------------------------------------------------

class PieceTokenizer:
    """Splits a word into 2-character pieces with ids from a growing table (stand-in for XLM-R)."""

    def __init__(self):
        self.table = {}

    def encode(self, text):
        pieces = [text[i:i + 2] for i in range(0, len(text), 2)]
        return [self.table.setdefault(p, 10 + len(self.table)) for p in pieces]


def write_labels(tmp_path, lang, words):
    (tmp_path / f"objects_vocab_{lang}.txt").write_text("\n".join(words) + "\n", encoding="utf-8")


def test_mrtm_target_is_a_subtoken_of_the_top1_class_word_in_the_caption_language(tmp_path):
    write_labels(tmp_path, "en", ["dog", "cat,kitty", "person", "table", "tree"])
    # Upper-case German words share no 2-character piece with the English ones.
    write_labels(tmp_path, "de", ["HUND", "KATZE", "MENSCH", "TISCH", "BAUM"])
    (tmp_path / "background.json").write_text('{"de": "HINTERGRUND"}', encoding="utf-8")
    tok = PieceTokenizer()
    vocab = LabelVocab.load(tmp_path, ["en", "de"], 6, tok)
    examples = {"c0": {"input_ids": [5, 6, 7], "img_fname": "i0", "lang": "de"}}
    source = source_of(examples, n_regions=8)
    mrtm = MrtmObjective(ObjectiveSettings(label_vocab=vocab))
    soft = source.parts[0][1].images["i0"]["soft_labels"]
    seen = set()
    for seed in range(60):
        ex = mrtm.build_example(source, 0, np.random.default_rng(seed))
        classes = soft[ex["img_masks"].numpy()].argmax(-1)
        assert len(ex["mrtm_labels"]) == len(classes) >= 1
        for cls, target in zip(classes, ex["mrtm_labels"].tolist()):
            assert target in vocab.words_tokens("de", int(cls))
            seen.add(target)
    english = {t for c in range(6) for t in vocab.words_tokens("en", c)}
    assert seen and not seen & english
    assert vocab.words_tokens("en", 2) == tok.encode("cat")  # "cat,kitty" -> first alternative
    assert vocab.words_tokens("de", 0) == tok.encode("HINTERGRUND")  # background.json
    assert vocab.words_tokens("en", 0) == tok.encode("background")  # built-in table
