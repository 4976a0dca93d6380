"""Demo corpus: determinism, truthful captions, correct alignments, VQA answers, and the built databases."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from data.demo import grammar, lexicon as lx
from data.demo.grammar import Description, Mention
from data.demo.raw import DemoConfig, image_captions, image_questions, make_scene, write_raw
from data.demo.scene import FEAT_DIM, NUM_CLASSES, Scene, SceneObject
from utils.errors import DataError

SMALL = DemoConfig(seed=3, n_train=20, n_val=5, n_test=5, captions_per_image=3)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo_raw") / "raw"
    return out, write_raw(out, SMALL, progress=False)


# ------------------------------------------------------------------------------------------- determinism
def test_same_seed_identical_files_other_seed_differs(raw, tmp_path):
    raw_dir, _ = raw
    write_raw(tmp_path / "again", SMALL, progress=False)
    assert _file_bytes(tmp_path / "again") == _file_bytes(raw_dir)
    other = DemoConfig(**{**vars(SMALL), "seed": 4})
    write_raw(tmp_path / "other", other, progress=False)
    assert (tmp_path / "other" / "captions_train.jsonl").read_bytes() != (raw_dir / "captions_train.jsonl").read_bytes()
    name = "npz/demo_imgs/demo_imgs_000000.npz"
    assert (tmp_path / "other" / name).read_bytes() != (raw_dir / name).read_bytes()


def test_bad_sizes_are_config_errors_naming_the_option():
    from utils.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'n_val' must be an integer >= 1, got 0"):
        DemoConfig(n_val=0)


# ------------------------------------------------------------------------------------------- raw statistics
def test_raw_counts_match_files_and_splits_are_disjoint(raw):
    raw_dir, stats = raw
    assert stats["images"] == {"train": 20, "val": 5, "test": 5}
    seen = set()
    for split, n_img in stats["images"].items():
        names = {row["img_fname"] for row in _jsonl(raw_dir / f"scenes_{split}.jsonl")}
        assert len(names) == n_img and not names & seen
        seen |= names
        per_lang = Counter(row["lang"] for row in _jsonl(raw_dir / f"captions_{split}.jsonl"))
        assert per_lang == {lang: 3 * n_img for lang in lx.LANGS} == stats["captions"][split]
        for lang in lx.VQA_LANGS:
            assert len(_jsonl(raw_dir / f"vqa_{split}_{lang}.jsonl")) == 4 * n_img == stats["vqa"][split][lang]
    assert sorted(p.name for p in (raw_dir / "npz" / "demo_imgs").iterdir()) == sorted(seen)
    assert len(stats["regions"]) == 30 and 3 <= min(stats["regions"]) and max(stats["regions"]) <= 9


def test_npz_has_the_converter_fields_consistent_with_the_scene(raw):
    raw_dir, _ = raw
    for row in _jsonl(raw_dir / "scenes_train.jsonl")[:10]:
        with np.load(raw_dir / "npz" / "demo_imgs" / row["img_fname"], allow_pickle=False) as npz:
            d = {k: npz[k] for k in npz.files}
        n = len(d["features"])
        assert {k: d[k].dtype for k in ("features", "norm_bb", "conf", "soft_labels")} == dict.fromkeys(
            ("features", "norm_bb", "conf", "soft_labels"), np.float32)
        assert d["features"].shape == (n, FEAT_DIM) and d["norm_bb"].shape == (n, 6)
        assert d["conf"].shape == (n, 1) and d["soft_labels"].shape == (n, NUM_CLASSES)
        assert (int(d["image_w"]), int(d["image_h"])) == (row["width"], row["height"])
        assert np.all(np.diff(d["conf"][:, 0]) <= 0), "most confident first"
        np.testing.assert_allclose(d["soft_labels"].sum(1), 1.0, atol=1e-5)
        np.testing.assert_allclose(d["conf"][:, 0], d["soft_labels"][:, 1:].max(1), atol=1e-6)
        np.testing.assert_allclose(d["norm_bb"][:, 4:], d["norm_bb"][:, 2:4] - d["norm_bb"][:, :2], atol=1e-6)
        # Every object is a region with its box, whose top label is its class.
        for obj in row["objects"]:
            match = np.abs(d["norm_bb"][:, :4] - np.array(obj["box"])).max(1) < 1e-5
            assert match.sum() == 1
            assert d["soft_labels"][match][0].argmax() == lx.CLASS_KEYS.index(obj["class"]) + 1
            cx, cy = (obj["box"][0] + obj["box"][2]) / 2, (obj["box"][1] + obj["box"][3]) / 2
            assert (int(cx * 3), int(cy * 3)) == (obj["col"], obj["row"]), "box centre lies in its grid cell"


def test_labels_files_list_classes_without_background(raw):
    raw_dir, _ = raw
    en = (raw_dir / "labels" / "objects_vocab_en.txt").read_text(encoding="utf-8").splitlines()
    cs = (raw_dir / "labels" / "objects_vocab_cs.txt").read_text(encoding="utf-8").splitlines()
    assert en[:3] == ["cube", "ball", "cup"] and len(en) == NUM_CLASSES - 1 and "background" not in en
    assert cs[3] == "pes"
    assert json.loads((raw_dir / "labels" / "background.json").read_text(encoding="utf-8"))["de"] == "Hintergrund"


# ------------------------------------------------------------------------------------------- captions
def _scene(*objs: tuple[str, str, str, int, int]) -> Scene:
    objects = tuple(SceneObject(cls=lx.CLASS_KEYS.index(c) + 1, colour=lx.COLOUR_KEYS.index(col),
                                size=lx.SIZE_KEYS.index(size), row=r, col=cc, box=(0, 0, 0.1, 0.1))
                    for c, col, size, r, cc in objs)
    return Scene(index=0, img_fname="x.npz", width=640, height=480, objects=objects)


def test_grammar_agreement_word_order_counters_and_measure_words():
    scene = _scene(("cat", "white", "small", 0, 0), ("dog", "orange", "large", 0, 2))
    rel = Description("rel", (Mention(0, True), Mention(1, False)), relation="left")
    text = {lang: grammar.caption_text(lang, grammar.render(lang, scene, rel)) for lang in lx.LANGS}
    assert text == {"en": "a small white cat to the left of an orange dog",
                    "de": "eine kleine weiße Katze links von einem orangefarbenen Hund",
                    "fr": "un petit chat blanc à gauche d'un chien orange",
                    "cs": "malá bílá kočka vlevo od oranžového psa",
                    "ja": "オレンジの犬の左に小さい白い猫がいる",
                    "zh": "一只白色的小猫在一只橙色的狗的左边"}
    there = Description("np", (Mention(1, False),), there=True, position="right")
    assert grammar.caption_text("ja", grammar.render("ja", scene, there)) == "右にオレンジの犬が一匹いる"
    assert grammar.caption_text("de", grammar.render("de", scene, there)) == \
        "es gibt einen orangefarbenen Hund rechts im Bild"
    below = Description("rel", (Mention(1, False), Mention(0, False)), relation="below")
    assert grammar.caption_text("cs", grammar.render("cs", scene, below)) == "oranžový pes pod bílou kočkou"
    assert grammar.caption_text("fr", grammar.render("fr", scene, below)) == "un chien orange sous un chat blanc"


def test_captions_match_files_and_are_true_of_their_image(raw):
    raw_dir, _ = raw
    vocab = {lang: (raw_dir / "labels" / f"objects_vocab_{lang}.txt").read_text(encoding="utf-8").split("\n")
             for lang in lx.LANGS}
    rows = {(r["img_fname"], r["lang"], r["id"]): r["caption"] for r in _jsonl(raw_dir / "captions_val.jsonl")}
    for index in SMALL.split_indices()["val"]:
        scene = make_scene(SMALL, index)
        truth = {(o.cls_key, o.colour_key, o.size_key) for o in scene.objects}
        for lang in lx.LANGS:
            for k, words in enumerate(image_captions(SMALL, scene, lang)):
                assert rows[(scene.img_fname, lang, f"cap_{lang}_{index:06d}_{k}")] == grammar.caption_text(lang, words)
                if lang in lx.NO_SPACE_LANGS:
                    assert " " not in grammar.caption_text(lang, words)
                mentioned: dict[int, dict[str, str]] = {}
                for text, tags in words:
                    for sense, slot in tags:
                        kind, _, key = sense.partition(":")
                        if kind in ("class", "colour", "size"):
                            mentioned.setdefault(slot, {})[kind] = key
                        if kind == "class":  # the word is the label-file name (Czech: an inflection of it)
                            name = vocab[lang][lx.CLASS_KEYS.index(key)]
                            assert text == name or (lang == "cs" and text in lx.CS_NOUNS[key][1:]
                                                    and name == lx.CS_NOUNS[key][1])
                for m in mentioned.values():
                    assert any(t[0] == m["class"] and t[1] == m["colour"] and t[2] == m.get("size", t[2])
                               for t in truth), f"{lang} caption names an object that is not in {scene.img_fname}"


def test_paired_alignments_are_in_range_translations_and_complete(raw):
    raw_dir, _ = raw
    en_senses = lx.surface_senses("en")
    for x in lx.PAIR_LANGS:
        x_senses = lx.surface_senses(x)
        rows = _jsonl(raw_dir / f"paired_train_en-{x}.jsonl")
        lines = (raw_dir / f"paired_train_en-{x}.align").read_text(encoding="utf-8").split("\n")[:-1]
        assert len(rows) == len(lines) == 20
        for row, line in zip(rows, lines):
            en_words, x_words = row["caption1"].split(), row["caption2"].split()
            pairs = [tuple(map(int, p.split("-"))) for p in line.split()]
            assert pairs and all(i < len(en_words) and j < len(x_words) for i, j in pairs)
            for i, j in pairs:
                assert en_senses[en_words[i]] & x_senses[x_words[j]], (x, en_words[i], x_words[j])
            aligned_en = {i for i, _ in pairs}
            for i, w in enumerate(en_words):  # every class and colour word has its translation
                if any(s.startswith(("class:", "colour:")) for s in en_senses.get(w, ())):
                    assert i in aligned_en, (x, row["caption1"], row["caption2"], line)


# ------------------------------------------------------------------------------------------- VQA
def test_vqa_majority_answers_are_correct_and_noise_gives_soft_scores(raw):
    raw_dir, stats = raw
    rows = _jsonl(raw_dir / "vqa_train_en.jsonl")
    ja = _jsonl(raw_dir / "vqa_train_ja.jsonl")
    assert [r["qtype"] for r in rows] == [r["qtype"] for r in ja]
    assert set(stats["vqa_types"]["train"]) == {"colour", "count", "exist", "relation"}
    unanimous = 0
    for index in SMALL.split_indices()["train"]:
        scene = make_scene(SMALL, index)
        counts = Counter(o.cls_key for o in scene.objects)
        for q, _answers in image_questions(SMALL, scene):
            row = rows.pop(0)
            assert len(row["answers"]) == 10
            top, n_top = Counter(row["answers"]).most_common(1)[0]
            unanimous += n_top == 10
            if q.qtype == "count":
                assert row["question"] == f"how many {lx.EN_NOUNS[q.cls_key][1]} are there?"
                assert int(q.answer) == counts[q.cls_key]
            if q.qtype == "exist":
                assert q.answer == (q.cls_key in counts)
            if q.qtype == "colour":
                assert [o.colour_key for o in scene.objects if o.cls_key == q.cls_key] == [q.answer]
    assert 0 < unanimous < 80, "some but not all questions have annotator disagreement"


# ------------------------------------------------------------------------------------------- full build
@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict, str]:
    """The CLI run from another working directory on a tiny corpus."""
    out = tmp_path_factory.mktemp("demo_built") / "corpus"
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_demo_data.py"
    result = subprocess.run([sys.executable, str(script), "--out", str(out), "--n_train", "12", "--n_val", "4",
                             "--n_test", "4", "--quiet", "--seed", "5"], cwd=tmp_path_factory.mktemp("cwd"),
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    return out, json.loads((out / "stats.json").read_text(encoding="utf-8")), result.stdout


def test_cli_prints_the_statistics_table(built):
    out, stats, stdout = built
    assert f"demo corpus at {out}" in stdout
    assert any(line.split() == ["images", "12", "4", "4"] for line in stdout.splitlines())
    assert any(line.split() == ["zh", "48", "16", "16"] for line in stdout.splitlines())
    assert not list(out.parent.glob("corpus.tmp-*")), "no temp dir left behind"


def test_built_databases_read_back_and_match_stats(built):
    from data.img_db import ImgDb, compute_num_bb
    from data.tokenizer import load_tokenizer
    from data.txt_db import TxtDb

    out, stats, _ = built
    tok = load_tokenizer(out / "tokenizer")
    assert stats["tokenizer"]["vocab_size"] == tok.vocab_size and tok.mask_id == tok.vocab_size - 1
    img_db = ImgDb(out / stats["img_db"]["dir"], conf_th=0.2, max_bb=100, min_bb=3)
    assert img_db.db_dir.name == stats["img_db"]["sub_db"] == "feat_th0.2_max100_min3"
    assert len(img_db.names) == 20 and img_db.feat_dim == FEAT_DIM
    for name in img_db.names[:5]:
        with np.load(out / "raw" / "npz" / "demo_imgs" / name) as npz:
            assert img_db.name2nbb[name] == min(len(npz["conf"]), compute_num_bb(npz["conf"], 0.2, 100, 3))
    for lang in lx.LANGS:
        for split in ("train", "val", "test"):
            db = TxtDb(out / "txt_db" / f"cap_{lang}_{split}.db")
            assert len(db.id2len) == stats["captions"][lang][split] == stats["txt_dbs"][db.db_dir.name]["examples"]
    db = TxtDb(out / "txt_db" / "cap_de_train.db")
    ex = db[db.ids[0]]
    assert ex["img_fname"] in img_db.names and list(ex["input_ids"]) == tok.encode(ex["raw"])
    assert db.meta["tokenizer"] == str(out / "tokenizer")


def test_ja_zh_text_is_tokenised_into_word_pieces(built):
    """No piece spans a word (the tokenizer is trained with the words marked): an unsegmented caption or
    question gives exactly the ids of its words, which is also what the segmented paired text gives."""
    from data.demo.raw import WORD_DELIMITER
    from data.tokenizer import load_tokenizer

    out, _, _ = built
    tok = load_tokenizer(out / "tokenizer")
    assert not any(WORD_DELIMITER in piece for piece in tok.hf.get_vocab())
    checked = Counter()
    for name in ("captions_train.jsonl", "vqa_train_ja.jsonl"):
        for row in _jsonl(out / "raw" / name):
            if row["lang"] not in lx.NO_SPACE_LANGS:
                assert "words" not in row
                continue
            text = row.get("caption", row.get("question"))
            assert row["words"].replace(" ", "") == text
            assert tok.encode(text) == tok.encode_words(row["words"].split(), row["lang"])[0], text
            checked[row["lang"]] += 1
    assert checked["ja"] > 48 and checked["zh"] == 48


def test_built_paired_and_vqa_dbs(built):
    from data.txt_db import TxtDb

    out, stats, _ = built
    rows = _jsonl(out / "raw" / "paired_val_en-ja.jsonl")
    aligns = (out / "raw" / "paired_val_en-ja.align").read_text(encoding="utf-8").splitlines()
    db = TxtDb(out / "txt_db" / "paired_en-ja_val.db")
    assert len(db.id2len) == stats["paired"]["en-ja"]["val"] == 4
    ex = db[rows[0]["id"]]
    expected = {}
    for pair in aligns[0].split():
        i, j = map(int, pair.split("-"))
        expected.setdefault(i, []).append(j)
    assert {int(k): sorted(v) for k, v in ex["lang1_lang2_walign"].items()} == expected
    assert len(ex["word2ids_lang2"]) == len(rows[0]["caption2"].split())
    vqa = TxtDb(out / "txt_db" / "vqa_ja_train.db")
    assert len(vqa.id2len) == stats["vqa"]["ja"]["train"] == 48
    ans2label = json.loads((out / "txt_db" / "vqa_ja_train.db" / "ans2label.json").read_text(encoding="utf-8"))
    scores = [s for qid in vqa.ids for s in vqa[qid]["target"]["scores"]]
    assert len(ans2label) == stats["vqa_answers"]["ja"]["answer_vocab"] and max(scores) == 1.0
    assert min(scores) < 1.0


def test_refuses_a_non_empty_output_and_force_replaces_it(built, tmp_path):
    from scripts.make_demo_data import build_demo_corpus

    out = tmp_path / "corpus"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match=r"corpus already exists and is not empty.*--force"):
        build_demo_corpus(out, n_train=2, n_val=1, n_test=1, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    stats = build_demo_corpus(out, n_train=3, n_val=2, n_test=2, force=True, progress=False)
    assert not (out / "keep.txt").exists() and stats["images"] == {"train": 3, "val": 2, "test": 2}
    assert json.loads((out / "stats.json").read_text(encoding="utf-8")) == stats
