"""TxtDb / TxtDbWriter: reading the original UC2 files, round trips, plain-reader compatibility, errors."""
import json
import pickle

import lmdb
import lz4.frame
import msgpack
import msgpack_numpy
import numpy as np
import pytest

from utils.errors import DataError
from data.lmdb_env import close_lmdb, open_lmdb
from data.txt_db import TxtDb, TxtDbWriter, encode_txt_value, read_txt_value

META = {"CLS": 0, "SEP": 2, "MASK": 999, "v_range": [5, 999], "bert": "xlm-roberta-base"}


def _write_small_db(db_dir, **kw):
    """Three examples: two captions of one image, one text-only example with numpy and int-keyed fields."""
    with TxtDbWriter(db_dir, META, **kw) as w:
        w.add("a", {"input_ids": [5, 6, 7], "img_fname": "img0.npz", "raw": "a cat"})
        w.add("b", {"input_ids": np.array([8, 9]), "img_fname": "img0.npz", "n_tokens": 4})
        w.add("c", {"input_ids": [10], "img_fname": None, "emb": np.arange(6, dtype=np.float16).reshape(2, 3),
                    "walign": {0: [1, 2], 3: []}})
    return db_dir


def test_reads_every_original_record(orig_fixtures):
    db = TxtDb(orig_fixtures / "txt_db" / "demo.db")
    assert db.ids == ["0", "1", "2", "3", "4", "5", "p0"]
    assert (db.cls_, db.sep, db.mask, db.v_range) == (0, 2, 999, (5, 999))
    for k in range(6):
        ex = db[str(k)]
        assert ex["raw"] == f"caption {k}"
        assert ex["img_fname"] == f"demo_imgs_{k // 2:06d}.npz" == db.txt2img[str(k)]
        assert len(ex["input_ids"]) == db.id2len[str(k)] == k + 4
        assert str(k) in db.img2txts[ex["img_fname"]]
    assert db["0"]["input_ids"] == [879, 669, 254, 648]
    p0 = db["p0"]
    assert p0["input_ids"] == p0["input_ids_lang1"] + [2, 0] + p0["input_ids_lang2"] == [10, 11, 12, 2, 0, 20, 21]
    assert p0["word2ids_lang1"] == [[0], [1, 2]] and p0["word2ids_lang2"] == [[0], [1]]
    assert p0["lang1_lang2_walign"] == {0: [1], 1: [0]}  # integer keys survive
    assert "p0" not in sum(db.img2txts.values(), [])


def test_max_txt_len_filters_ids_and_lens(orig_fixtures):
    db = TxtDb(orig_fixtures / "txt_db" / "demo.db", max_txt_len=6)
    assert db.ids == ["0", "1", "2"] and db.lens == [4, 5, 6] and len(db) == 3
    assert "2" in db and "3" not in db and "p0" not in db
    assert db["p0"]["input_ids_lang2"] == [20, 21]  # still readable by id, only not listed


def test_round_trip(tmp_path):
    db = TxtDb(_write_small_db(tmp_path / "x.db"))
    assert db.meta == META
    assert db.ids == ["a", "b", "c"] and db.lens == [3, 4, 1]  # n_tokens overrides len(input_ids)
    assert db.txt2img == {"a": "img0.npz", "b": "img0.npz", "c": None}
    assert db.img2txts == {"img0.npz": ["a", "b"]}
    assert db["b"]["input_ids"] == [8, 9]
    c = db["c"]
    assert c["walign"] == {0: [1, 2], 3: []}
    np.testing.assert_array_equal(c["emb"], np.arange(6, dtype=np.float16).reshape(2, 3))
    c["emb"][0, 0] = 7  # decoded arrays are writable copies
    assert TxtDb(tmp_path / "x.db", max_txt_len=3).ids == ["a", "c"]


def test_extra_json_side_file_is_published(tmp_path):
    with TxtDbWriter(tmp_path / "v.db", META) as w:
        w.add("q", {"input_ids": [5], "img_fname": "i.npz"})
        w.add_json("ans2label.json", {"yes": 0})
    assert json.loads((tmp_path / "v.db" / "ans2label.json").read_text()) == {"yes": 0}
    with pytest.raises(DataError, match="id2len.json"):
        TxtDbWriter(tmp_path / "w.db", META).add_json("id2len.json", {})


def test_plain_reader_reads_project_output(tmp_path):
    """What we write is readable with lmdb + lz4 + msgpack(-numpy) alone, as the original TxtLmdb read it."""
    db_dir = _write_small_db(tmp_path / "x.db")
    env = lmdb.open(str(db_dir), readonly=True, lock=False)
    with env.begin() as txn:
        records = {k.decode(): msgpack.unpackb(lz4.frame.decompress(v), raw=False, strict_map_key=False,
                                               object_hook=msgpack_numpy.decode) for k, v in txn.cursor()}
    env.close()
    assert set(records) == {"a", "b", "c"}
    assert records["a"] == {"input_ids": [5, 6, 7], "img_fname": "img0.npz", "raw": "a cat"}
    assert records["c"]["emb"].dtype == np.float16 and records["c"]["emb"].shape == (2, 3)
    assert json.loads((db_dir / "id2len.json").read_text()) == {"a": 3, "b": 4, "c": 1}


def test_value_helpers_round_trip_and_reject_garbage():
    value = {"input_ids": [1, 2], "m": {1: "x"}, "arr": np.ones((2, 2), np.int32)}
    back = read_txt_value(encode_txt_value(value))
    assert back["m"] == {1: "x"} and back["arr"].dtype == np.int32 and back["arr"].sum() == 4
    with pytest.raises(DataError, match="where-label: not a valid lz4 frame"):
        read_txt_value(b"garbage", where="where-label")
    with pytest.raises(DataError, match="not a valid msgpack value"):
        read_txt_value(lz4.frame.compress(b"\xc1"))


def test_txt_db_pickles_after_use(tmp_path):
    db = TxtDb(_write_small_db(tmp_path / "x.db"))
    assert db["a"]["raw"] == "a cat"  # opens the env in this process first
    clone = pickle.loads(pickle.dumps(db))
    assert clone["a"]["raw"] == "a cat" and clone.ids == db.ids


def test_missing_dir_and_not_lmdb(tmp_path):
    with pytest.raises(DataError, match="nope.db: directory not found"):
        TxtDb(tmp_path / "nope.db")
    (tmp_path / "empty.db").mkdir()
    with pytest.raises(DataError, match="empty.db: no data.mdb"):
        TxtDb(tmp_path / "empty.db")
    with pytest.raises(DataError, match="nope: directory not found"):
        open_lmdb(tmp_path / "nope")


def test_missing_or_bad_side_files(tmp_path):
    db_dir = _write_small_db(tmp_path / "x.db")
    (db_dir / "txt2img.json").write_text("{not json")
    with pytest.raises(DataError, match=r"txt2img.json: not valid JSON"):
        TxtDb(db_dir)
    (db_dir / "txt2img.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"txt2img.json: expected a JSON object .* found a JSON list"):
        TxtDb(db_dir)
    (db_dir / "txt2img.json").unlink()
    with pytest.raises(DataError, match=r"txt2img.json: file not found"):
        TxtDb(db_dir)
    (db_dir / "txt2img.json").write_text("{}")
    (db_dir / "id2len.json").write_text('{"a": 3, "b": "four"}')
    with pytest.raises(DataError, match=r"id2len.json: entry 'b' = 'four', expected a non-negative integer"):
        TxtDb(db_dir)
    (db_dir / "id2len.json").write_text("{}")
    (db_dir / "meta.json").write_text('{"CLS": 0, "SEP": 2}')
    with pytest.raises(DataError, match=r"meta.json: key 'MASK' must be an integer"):
        TxtDb(db_dir)


def test_corrupt_value_and_unknown_key(tmp_path):
    db_dir = _write_small_db(tmp_path / "x.db")
    env = lmdb.open(str(db_dir))
    with env.begin(write=True) as txn:
        txn.put(b"b", b"\x04\x22\x4d\x18 truncated")
    env.close()
    db = TxtDb(db_dir)
    with pytest.raises(DataError, match=r"x.db, key 'b': not a valid lz4 frame"):
        db["b"]
    with pytest.raises(KeyError, match=r"x.db: no example with key 'zz'"):
        db["zz"]
    with pytest.raises(DataError):  # the same error is a DataError too
        db["zz"]


def test_writer_refuses_existing_dir_and_overwrites_when_asked(tmp_path):
    db_dir = _write_small_db(tmp_path / "x.db")
    assert TxtDb(db_dir)["a"]["raw"] == "a cat"  # cache an env on the old files
    with pytest.raises(DataError, match=r"x.db: already exists \(pass overwrite=True"):
        TxtDbWriter(db_dir, META)
    with TxtDbWriter(db_dir, META, overwrite=True) as w:
        w.add("new", {"input_ids": [42], "img_fname": None})
    db = TxtDb(db_dir)
    assert db.ids == ["new"] and db["new"]["input_ids"] == [42]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]


def test_exception_inside_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with TxtDbWriter(tmp_path / "x.db", META) as w:
            w.add("a", {"input_ids": [5], "img_fname": None})
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_examples(tmp_path):
    with pytest.raises(DataError, match=r"key 'k': value must contain 'input_ids' and 'img_fname'"):
        with TxtDbWriter(tmp_path / "x.db", META) as w:
            w.add("k", {"input_ids": [1]})
    with pytest.raises(DataError, match=r"key 'k': 'input_ids' must be a list of int"):
        with TxtDbWriter(tmp_path / "x.db", META) as w:
            w.add("k", {"input_ids": ["1"], "img_fname": None})
    with pytest.raises(DataError, match=r"key 'k': added twice"):
        with TxtDbWriter(tmp_path / "x.db", META) as w:
            w.add("k", {"input_ids": [1], "img_fname": None})
            w.add("k", {"input_ids": [2], "img_fname": None})
    with pytest.raises(DataError, match=r"meta: key 'CLS' must be an integer"):
        TxtDbWriter(tmp_path / "x.db", {"SEP": 2, "MASK": 3})
    assert list(tmp_path.iterdir()) == []


def test_open_lmdb_caches_per_process(tmp_path):
    db_dir = _write_small_db(tmp_path / "x.db")
    env = open_lmdb(db_dir)
    assert open_lmdb(tmp_path / "." / "x.db") is env  # same real path, same environment
    with pytest.raises(DataError, match=r"x.db: already open read-only in this process"):
        open_lmdb(db_dir, readonly=False)
    assert close_lmdb(db_dir) and not close_lmdb(db_dir)
    assert open_lmdb(db_dir) is not env
    close_lmdb(db_dir)
