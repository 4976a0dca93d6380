"""No code runs from a database: crafted msgpack-numpy records holding pickled object arrays are refused.

msgpack-numpy decodes an array of kind 'O' with ``pickle.loads``; each crafted record here would create a
marker directory if it were unpickled. Every reader must raise a DataError naming the db and key instead.
"""
import os
import pickle

import lmdb
import lz4.frame
import msgpack
import numpy as np
import pytest

from utils.errors import DataError
from data.img_db import ImgDb, ImgDbWriter, decode_img_value
from data.lmdb_env import close_lmdb
from data.txt_db import TxtDb, TxtDbWriter, read_txt_value

META = {"CLS": 0, "SEP": 2, "MASK": 999, "v_range": [5, 999]}


class _MakesDir:
    """Unpickling this calls os.mkdir(path): the marker that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def _pickled_array(marker, kind=b"O", type_=b"|O") -> dict:
    """A msgpack-numpy array map whose payload is a pickle that creates ``marker``."""
    return {b"nd": True, b"type": type_, b"kind": kind, b"shape": [1], b"data": pickle.dumps(_MakesDir(marker))}


def _crafted_variants(marker):
    """Several shapes of the same attack: top-level field, nested in a list, nested in a map, odd type."""
    arr = _pickled_array(marker)
    return {
        "field": {"input_ids": [5, 6], "evil": arr},
        "in_list": {"input_ids": [5, 6], "evil": [1, arr]},
        "in_map": {"input_ids": [5, 6], "nested": {"deeper": arr}},
        "kind_only": {"input_ids": [5, 6], "evil": _pickled_array(marker, type_=b"<f4")},
        "type_only": {"input_ids": [5, 6], "evil": _pickled_array(marker, kind=b"")},
    }


def _overwrite(db_dir, key: bytes, value: bytes) -> None:
    close_lmdb(db_dir)
    env = lmdb.open(str(db_dir), subdir=True, readonly=False, lock=False)
    with env.begin(write=True) as txn:
        txn.put(key, value)
    env.close()


@pytest.mark.parametrize("variant", ["field", "in_list", "in_map", "kind_only", "type_only"])
def test_crafted_txt_db_record_is_refused_and_not_run(tmp_path, variant):
    marker = tmp_path / "code_ran"
    db_dir = tmp_path / "x.db"
    with TxtDbWriter(db_dir, META) as writer:
        writer.add("a", {"input_ids": [5, 6, 7], "img_fname": "img0.npz"})
    crafted = _crafted_variants(marker)[variant]
    _overwrite(db_dir, b"a", lz4.frame.compress(msgpack.packb(crafted, use_bin_type=True)))
    db = TxtDb(db_dir)
    with pytest.raises(DataError, match=r"x\.db.*'a'.*pickled object array"):
        db["a"]
    assert not marker.exists(), "a pickle in a txt_db record was executed"


def test_crafted_txt_value_bytes_refused(tmp_path):
    marker = tmp_path / "code_ran"
    data = lz4.frame.compress(msgpack.packb({"evil": _pickled_array(marker)}, use_bin_type=True))
    with pytest.raises(DataError, match="some db, key 'k': holds a pickled object array"):
        read_txt_value(data, "some db, key 'k'")
    assert not marker.exists()


def _img(n=3, dim=8):
    rng = np.random.default_rng(0)
    return {"features": rng.standard_normal((n, dim)).astype(np.float32),
            "norm_bb": rng.uniform(0, 1, (n, 6)).astype(np.float32),
            "conf": np.full((n, 1), 0.9, np.float32),
            "soft_labels": rng.dirichlet(np.ones(4), n).astype(np.float32)}


@pytest.mark.parametrize("where", ["features", "extra_field", "first_image"])
def test_crafted_img_db_record_is_refused_and_not_run(tmp_path, where):
    marker = tmp_path / "code_ran"
    img_dir = tmp_path / "imgs"
    with ImgDbWriter(img_dir) as writer:
        writer.add("a.npz", _img())
        writer.add("b.npz", _img())
    sub = next(p for p in img_dir.iterdir() if (p / "data.mdb").is_file())
    record = {k: {b"nd": True, b"type": "<f2", b"kind": b"", b"shape": list(v.shape),
                  b"data": v.astype(np.float16).tobytes()} for k, v in _img().items()}
    if where == "features":
        record["features"] = _pickled_array(marker)
    else:
        record["evil"] = _pickled_array(marker)
    target = b"a.npz" if where == "first_image" else b"b.npz"
    _overwrite(sub, target, msgpack.packb(record, use_bin_type=True))
    with pytest.raises(DataError, match=r"pickled object array"):
        db = ImgDb(img_dir)  # the first image is read on open
        db.get("b.npz")
    assert not marker.exists(), "a pickle in an img_db record was executed"


def test_crafted_img_value_bytes_refused(tmp_path):
    marker = tmp_path / "code_ran"
    data = msgpack.packb({"features": _pickled_array(marker)}, use_bin_type=True)
    with pytest.raises(DataError, match="img X, key 'k': holds a pickled object array"):
        decode_img_value(data, "img X, key 'k'")
    assert not marker.exists()


def test_numeric_arrays_still_decode(tmp_path):
    """The guard refuses only pickles: float16 and structured arrays written by msgpack-numpy decode."""
    import msgpack_numpy
    value = {"a": np.arange(6, dtype=np.float16).reshape(2, 3),
             "s": np.zeros(2, dtype=[("x", "<i4"), ("y", "<f4")])}
    data = lz4.frame.compress(msgpack.packb(value, use_bin_type=True, default=msgpack_numpy.encode))
    out = read_txt_value(data, "db")
    np.testing.assert_array_equal(out["a"], value["a"])
    assert out["s"].dtype == value["s"].dtype
