"""prepro.py parallel: an English-X TSV becomes the txt_db that MLA's NLT reads (data.mla_data.ParallelText)."""
from __future__ import annotations

import pytest

import prepro as prepro_cli
from utils.errors import DataError
from data.mla_data import ParallelText
from data.mla_prepro import build_parallel_db_from_tsv
from data.tokenizer import load_tokenizer
from data.txt_db import TxtDb
from tests.helpers import make_tiny_tokenizer, write_lines


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(make_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


def test_tsv_pairs_round_trip_into_nlt_batches(tok, tmp_path):
    src = write_lines(tmp_path / "en_de.tsv", ["p1\ta red car\tein rotes Auto\timg_1.npz", "",
                                               "p2\ta dog\tein Hund"])
    rc = prepro_cli.main(["parallel", "--input", str(src), "--output", str(tmp_path / "en-de.db"),
                          "--tokenizer", str(tok.path), "--lang2", "de"])
    assert rc == 0
    db = TxtDb(tmp_path / "en-de.db", max_txt_len=None)
    assert sorted(db.ids) == ["p1", "p2"] and db.txt2img["p1"] == "img_1.npz" and db.txt2img["p2"] is None
    assert db["p1"]["input_ids_lang1"] == tok.encode("a red car")
    pairs = ParallelText(db, "en", "de", max_len=4)        # truncation keeps </s> last
    batch = pairs.batch([0, 1])
    assert batch["native_ids"].shape[1] <= 4 and (batch["input_ids"] == tok.sep_id).any(dim=1).all()


def test_native_tokenizer_ids_are_used_as_given(tok, tmp_path):
    src = write_lines(tmp_path / "en_fr.tsv", ["p1\ta cat\tun chat"])
    build_parallel_db_from_tsv(src, tmp_path / "en-fr.db", tok, "fr", native_tokenizer=lambda t: [7, 8, 9])
    pairs = ParallelText(TxtDb(tmp_path / "en-fr.db", max_txt_len=None), "en", "fr", max_len=40)
    assert pairs.native == [[7, 8, 9]]


def test_bad_tsv_lines_are_named(tok, tmp_path):
    bad = write_lines(tmp_path / "bad.tsv", ["p1\tonly two"])
    with pytest.raises(DataError, match=r"bad.tsv, line 1: expected 'id<TAB>english<TAB>x"):
        build_parallel_db_from_tsv(bad, tmp_path / "bad.db", tok, "de")
    twice = write_lines(tmp_path / "twice.tsv", ["p1\ta\tb", "p1\tc\td"])
    with pytest.raises(DataError, match="line 2: id 'p1' appears twice"):
        build_parallel_db_from_tsv(twice, tmp_path / "twice.db", tok, "de")
    assert not (tmp_path / "twice.db").exists()  # nothing half-written
