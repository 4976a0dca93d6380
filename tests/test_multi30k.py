"""Multi30K as distributed -> parallel txt_dbs (prepro.py multi30k): several test sets at once, misaligned
files refused naming the line, long-pair filtering keeps sentence <-> image alignment (MMT_FACTS §11.14),
the seed's text pipeline as an option (§11.11)."""
from __future__ import annotations

import gzip

import pytest

import prepro
from utils.errors import DataError
from data.multi30k import build_multi30k, db_path, seed_preprocess
from data.tokenizer import load_tokenizer
from data.txt_db import TxtDb
from tests.helpers import make_tiny_tokenizer, write_lines

SPLITS = ("train", "val", "test_2016_flickr", "test_2017_mscoco")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(make_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


def make_raw(root, n=5, long_at=None, gz=False):
    """A Multi30K-layout folder; sentence k mentions image k so alignment can be checked."""
    (root / "image_splits").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        en = [f"a dog number {k} runs" for k in range(n)]
        de = [f"ein Hund Nummer {k} läuft" for k in range(n)]
        if long_at is not None and split == "train":
            en[long_at] = " ".join(["dog"] * 80)
        if gz:
            with gzip.open(root / f"{split}.en.gz", "wt", encoding="utf-8") as fh:
                fh.write("\n".join(en) + "\n")
        else:
            write_lines(root / f"{split}.en", en)
        write_lines(root / f"{split}.de", de)
        write_lines(root / "image_splits" / f"{split}.txt", [f"{split}_{k}.jpg" for k in range(n)])
    return root


def _rows(out, split):
    db = TxtDb(db_path(out, "en", "de", split))
    return [db[i] for i in db.ids]


def test_several_splits_at_once_with_raw_text_and_images(tok, tmp_path):
    raw = make_raw(tmp_path / "raw", gz=True)
    summary = build_multi30k(raw, tmp_path / "out", tok, "en", "de", splits=SPLITS)
    assert set(summary) == set(SPLITS)
    for split in SPLITS:
        rows = _rows(tmp_path / "out", split)
        assert len(rows) == 5
        for row in rows:
            k = row["raw_lang1"].split()[3]
            assert row["img_fname"] == f"{split}_{k}.jpg" and f"Nummer {k} " in row["raw_lang2"]
            assert (row["lang1"], row["lang2"]) == ("en", "de")
            assert row["input_ids_lang1"] == tok.encode_words(row["raw_lang1"].split(), "en")[0]


def test_long_pair_filter_keeps_sentence_image_alignment(tok, tmp_path):
    raw = make_raw(tmp_path / "raw", long_at=2)
    summary = build_multi30k(raw, tmp_path / "out", tok, "en", "de", splits=SPLITS, max_len=30)
    assert summary["train"]["dropped_too_long"] == 1 and summary["train"]["written"] == 4
    rows = _rows(tmp_path / "out", "train")
    assert sorted(r["img_fname"] for r in rows) == [f"train_{k}.jpg" for k in (0, 1, 3, 4)]
    for row in rows:  # every surviving sentence still sits with its own image
        assert row["img_fname"] == f"train_{row['raw_lang1'].split()[3]}.jpg"
    assert summary["val"]["dropped_too_long"] == 0  # only training splits are filtered


@pytest.mark.parametrize("victim", ["val.de", "image_splits/val.txt"])
def test_misaligned_files_are_refused_naming_the_line_and_nothing_is_written(tok, tmp_path, victim):
    raw = make_raw(tmp_path / "raw")
    path = raw / victim
    path.write_text("\n".join(path.read_text().splitlines()[:3]) + "\n")
    with pytest.raises(DataError, match=r"line 4: no counterpart in .*" + victim.split("/")[-1]):
        build_multi30k(raw, tmp_path / "out", tok, "en", "de", splits=SPLITS)
    assert not (tmp_path / "out").exists()


def test_unknown_image_is_an_error_naming_the_line(tok, tmp_path):
    raw = make_raw(tmp_path / "raw")
    img_db = tmp_path / "img"
    img_db.mkdir()
    names = [f"{s}_{k}" for s in SPLITS for k in range(5) if (s, k) != ("val", 3)]
    (img_db / "nbb_th0.2_max100_min10.json").write_text("{" + ",".join(f'"{n}": 10' for n in names) + "}")
    with pytest.raises(DataError, match=r"val.txt, line 4: image .val_3.jpg."):
        build_multi30k(raw, tmp_path / "out", tok, "en", "de", splits=SPLITS, img_db=img_db)
    assert not (tmp_path / "out").exists()
    summary = build_multi30k(raw, tmp_path / "out", tok, "en", "de", splits=SPLITS, img_db=img_db,
                             drop_unknown_images=True)
    assert summary["val"]["dropped_unknown_image"] == 1
    assert _rows(tmp_path / "out", "train")[0]["img_fname"] == "train_0"  # the img_db's key (the stem)


def test_seed_preprocessing():
    assert seed_preprocess("Über Straße", "de") == "uber straße"
    assert seed_preprocess("Zwei Männer „stehen“ am Ofen… und essen.", "de") == \
        'zwei manner " stehen " am ofen ... und essen .'


def test_cli(tok, tmp_path, capsys):
    raw = make_raw(tmp_path / "raw")
    rc = prepro.main(["multi30k", "--input", str(raw), "--src", "en", "--tgt", "de", "--output", str(tmp_path / "o"),
                      "--tokenizer", str(tok.path), "--splits", "train", "val", "--seed_preprocess"])
    assert rc == 0 and '"written": 5' in capsys.readouterr().out
    assert _rows(tmp_path / "o", "val")[0]["raw_lang2"] == "ein hund nummer 0 lauft"
