"""ImgDb / ImgDbWriter: the original img_db fixtures, round trips, nbb fallback, DataLoader workers, errors."""
import io
import json
import logging

import lmdb
import msgpack
import msgpack_numpy
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from utils.errors import DataError
from data.img_db import ImgDb, ImgDbWriter, compute_num_bb
from data.txt_db import TxtDb, TxtDbWriter

NBB_JSON = "nbb_th0.2_max100_min10.json"


def _image(n: int, dim: int = 8, seed: int = 0, classes: int = 5) -> dict:
    """Float32 arrays of one image with ``n`` boxes, confidences descending from 0.95 in steps of 0.1."""
    rng = np.random.default_rng(seed)
    return {"features": rng.standard_normal((n, dim)).astype(np.float32),
            "norm_bb": rng.uniform(0, 1, (n, 6)).astype(np.float32),
            "conf": (0.95 - 0.1 * np.arange(n, dtype=np.float32))[:, None],
            "soft_labels": rng.dirichlet(np.ones(classes), n).astype(np.float32)}


def _write_img_db(img_dir, images: dict, **kw) -> None:
    with ImgDbWriter(img_dir, **kw) as w:
        for name, arrays in images.items():
            w.add(name, arrays)


def _as16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float32)


def test_compute_num_bb():
    conf = np.array([0.9, 0.5, 0.3, 0.21, 0.2, 0.1])[:, None]
    assert compute_num_bb(conf, 0.2, max_bb=100, min_bb=2) == 4  # strictly greater than conf_th
    assert compute_num_bb(conf, 0.2, max_bb=3, min_bb=2) == 3
    assert compute_num_bb(conf, 0.95, max_bb=100, min_bb=2) == 2


def _check_against_npz(db: ImgDb, npz_dir, nbb: dict) -> None:
    for name in db.names:
        src = np.load(npz_dir / name)
        out = db.get(name)
        n = nbb[name]
        for key in ("features", "norm_bb", "conf", "soft_labels"):
            assert out[key].dtype == np.float32 and out[key].shape == (n,) + src[key].shape[1:]
            np.testing.assert_array_equal(out[key], _as16(src[key][:n]))
        bb = out["norm_bb"]
        np.testing.assert_array_equal(out["pos_feat"], np.concatenate([bb, bb[:, 4:5] * bb[:, 5:6]], 1))


def test_reads_original_msgpack_variant(orig_fixtures):
    db = ImgDb(orig_fixtures / "img_db" / "demo_imgs")
    assert db.db_dir.name == "feat_th0.2_max100_min10" and not db.compressed
    assert sorted(db.names) == [f"demo_imgs_00000{i}.npz" for i in range(3)]
    nbb = json.loads((orig_fixtures / "img_db" / "demo_imgs" / NBB_JSON).read_text())
    assert db.name2nbb == nbb == {"demo_imgs_000000.npz": 10, "demo_imgs_000001.npz": 12,
                                  "demo_imgs_000002.npz": 16}
    assert (db.feat_dim, db.label_dim) == (40, 1601)
    _check_against_npz(db, orig_fixtures / "npz" / "demo_imgs", nbb)


def test_reads_original_compressed_variant(orig_fixtures):
    img_dir = orig_fixtures / "img_db" / "demo_imgs"
    all_boxes = ImgDb(img_dir, compressed=True, keep_all=True)
    assert all_boxes.db_dir.name == "all_compressed" and all_boxes.compressed
    counts = {f"demo_imgs_00000{i}.npz": n for i, n in enumerate((12, 15, 18))}
    assert all_boxes.name2nbb == counts  # every box stored
    _check_against_npz(all_boxes, orig_fixtures / "npz" / "demo_imgs", counts)
    # Asked for the rule in compressed form: falls back to all_compressed and cuts with the nbb json.
    ruled = ImgDb(img_dir, compressed=True)
    assert ruled.db_dir.name == "all_compressed" and ruled.get("demo_imgs_000002.npz")["features"].shape == (16, 40)


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(tmp_path, compress):
    images = {"b.npz": _image(12, seed=1), "a.npz": _image(4, seed=2)}
    images["a.npz"]["image_size"] = np.array([480, 640], dtype=np.int32)  # 1-d extra arrays are kept
    _write_img_db(tmp_path, images, min_bb=2, compress=compress)
    db = ImgDb(tmp_path, min_bb=2)
    assert db.compressed == compress and db.names == ["b.npz", "a.npz"]  # insertion order in __keys__
    assert db.name2nbb == {"b.npz": 12, "a.npz": 4}
    assert json.loads((tmp_path / "nbb_th0.2_max100_min2.json").read_text()) == db.name2nbb
    assert (db.feat_dim, db.label_dim, len(db), "a.npz" in db, "c.npz" in db) == (8, 5, 2, True, False)
    out = db.get("a.npz")
    for key in ("features", "norm_bb", "conf", "soft_labels"):
        np.testing.assert_array_equal(out[key], _as16(images["a.npz"][key]))
    out["features"][0, 0] = 1.0  # writable copy
    np.testing.assert_allclose(out["pos_feat"][:, 6], out["norm_bb"][:, 4] * out["norm_bb"][:, 5])


def test_plain_reader_reads_project_output(tmp_path):
    """Our records decode with lmdb + msgpack-numpy / np.load alone, as UNITER's DetectFeatLmdb did."""
    img = _image(3)
    _write_img_db(tmp_path, {"x.npz": img}, min_bb=1)
    _write_img_db(tmp_path, {"x.npz": img}, keep_all=True, compress=True)
    env = lmdb.open(str(tmp_path / "feat_th0.2_max100_min1"), readonly=True, lock=False)
    with env.begin() as txn:
        rec = msgpack.unpackb(txn.get(b"x.npz"), raw=False, object_hook=msgpack_numpy.decode)
        assert json.loads(txn.get(b"__keys__")) == ["x.npz"]
    env.close()
    env = lmdb.open(str(tmp_path / "all_compressed"), readonly=True, lock=False)
    with env.begin() as txn:
        npz = np.load(io.BytesIO(txn.get(b"x.npz")))
        packed = {k: npz[k] for k in npz.files}
    env.close()
    for arrays in (rec, packed):
        assert set(arrays) == set(img) and arrays["features"].dtype == np.float16
        np.testing.assert_array_equal(arrays["features"], img["features"].astype(np.float16))


def test_missing_nbb_json_falls_back_to_conf(tmp_path, caplog):
    # Only the 'all' variant and no nbb json: the case the original crashed on.
    _write_img_db(tmp_path, {"a.npz": _image(9), "b.npz": _image(5, seed=3)}, keep_all=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all"]
    with caplog.at_level(logging.WARNING, logger="data.img_db"):
        db = ImgDb(tmp_path, min_bb=2, max_bb=6)
    assert db.db_dir.name == "all"
    # conf = 0.95, 0.85, ...: 8 boxes above 0.2 for a (capped at max_bb 6), 5 for b
    assert db.name2nbb == {"a.npz": 6, "b.npz": 5}
    assert db.get("a.npz")["features"].shape == (6, 8)
    assert sum("not found, computing box counts" in r.message for r in caplog.records) == 1


class _PairDataset(Dataset):
    """Text example + its image's features, as a training dataset reads them."""

    def __init__(self, txt_db: TxtDb, img_db: ImgDb):
        self.txt_db, self.img_db = txt_db, img_db

    def __len__(self):
        return len(self.txt_db)

    def __getitem__(self, i):
        ex = self.txt_db[self.txt_db.ids[i]]
        feats = self.img_db.get(ex["img_fname"])["features"]
        return torch.tensor(ex["input_ids"]).sum(), torch.from_numpy(feats).sum()


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers(tmp_path, context):
    """Built here (not from the fixtures) so that this runs everywhere; envs are open in the parent first."""
    images = {f"i{k}.npz": _image(3 + k, seed=k) for k in range(3)}
    _write_img_db(tmp_path / "img", images, min_bb=1)
    with TxtDbWriter(tmp_path / "t.db", {"CLS": 0, "SEP": 2, "MASK": 3}) as w:
        for k in range(6):
            w.add(str(k), {"input_ids": list(range(5, 6 + k)), "img_fname": f"i{k % 3}.npz"})
    ds = _PairDataset(TxtDb(tmp_path / "t.db"), ImgDb(tmp_path / "img", min_bb=1))
    expected = [tuple(float(t) for t in ds[i]) for i in range(len(ds))]
    assert expected[4][0] == sum(range(5, 10))
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context=context)
    assert [tuple(float(t) for t in item) for item in loader] == expected


def test_missing_dir_and_no_matching_db(tmp_path):
    with pytest.raises(DataError, match="nope: directory not found"):
        ImgDb(tmp_path / "nope")
    _write_img_db(tmp_path, {"a.npz": _image(3)}, keep_all=True, compress=True)
    with pytest.raises(DataError, match=r"tried \['feat_th0.2_max100_min10', 'all'\], found \['all_compressed'\]"):
        ImgDb(tmp_path, compressed=False)


def test_unknown_name_corrupt_record_and_wrong_width(tmp_path):
    _write_img_db(tmp_path, {"a.npz": _image(3), "b.npz": _image(3, dim=6), "c.npz": _image(3)}, min_bb=1)
    env = lmdb.open(str(tmp_path / "feat_th0.2_max100_min1"))
    with env.begin(write=True) as txn:
        txn.put(b"c.npz", b"\x93garbage")
    env.close()
    db = ImgDb(tmp_path, min_bb=1)
    assert db.feat_dim == 8
    with pytest.raises(KeyError, match=r"feat_th0.2_max100_min1: no image named 'zz.npz'"):
        db.get("zz.npz")
    with pytest.raises(DataError, match=r"key 'b.npz': 'features' has shape \(3, 6\), expected \(n, 8\)"):
        db.get("b.npz")
    with pytest.raises(DataError, match=r"key 'c.npz': not a valid image record"):
        db.get("c.npz")


def test_bad_nbb_json(tmp_path):
    _write_img_db(tmp_path, {"a.npz": _image(3)}, min_bb=1)
    (tmp_path / "nbb_th0.2_max100_min1.json").write_text("{oops")
    with pytest.raises(DataError, match=r"nbb_th0.2_max100_min1.json: not valid JSON"):
        ImgDb(tmp_path, min_bb=1)
    (tmp_path / "nbb_th0.2_max100_min1.json").write_text('{"other.npz": 3}')
    with pytest.raises(DataError, match=r"nbb_th0.2_max100_min1.json: no box count for 1 image"):
        ImgDb(tmp_path, min_bb=1)


def test_writer_refuses_existing_and_cleans_up_on_error(tmp_path):
    _write_img_db(tmp_path, {"a.npz": _image(3)})
    with pytest.raises(DataError, match=r"feat_th0.2_max100_min10: already exists"):
        ImgDbWriter(tmp_path)
    out = tmp_path / "new"
    with pytest.raises(RuntimeError, match="boom"):
        with ImgDbWriter(out) as w:
            w.add("a.npz", _image(3))
            raise RuntimeError("boom")
    assert list(out.iterdir()) == []  # no sub-LMDB, no temp dir, no nbb json
    with pytest.raises(DataError, match=r"key 'a.npz': needs 'norm_bb' of shape \(3, 6\)"):
        with ImgDbWriter(out) as w:
            w.add("a.npz", {"features": np.zeros((3, 4), np.float32), "norm_bb": np.zeros((2, 6))})
    assert list(out.iterdir()) == []
