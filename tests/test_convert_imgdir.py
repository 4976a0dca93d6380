"""scripts/convert_imgdir.py against UNITER's own output on the same .npz inputs, plus dropped files and errors."""
import io
import json
import subprocess
import sys

import msgpack
import msgpack_numpy
import numpy as np
import pytest

from utils.errors import DataError
from data.img_db import ImgDb
from data.lmdb_env import open_lmdb
from scripts.convert_imgdir import convert_imgdir, summary_line


def _records(db_dir) -> dict:
    """{key: raw bytes} of every record of an LMDB.

    Through the project's per-process cache: other tests in this process may hold the fixture's
    environment open, and py-lmdb refuses a second plain ``lmdb.open`` of it.
    """
    with open_lmdb(db_dir).begin() as txn:
        return {bytes(k).decode(): bytes(v) for k, v in txn.cursor()}


def _decode(raw: bytes) -> dict:
    if raw[:2] == b"PK":
        npz = np.load(io.BytesIO(raw))
        return {k: npz[k] for k in npz.files}
    return msgpack.unpackb(raw, raw=False, object_hook=msgpack_numpy.decode)


def _assert_same_db(ours, theirs) -> None:
    mine, orig = _records(ours), _records(theirs)
    assert set(mine) == set(orig)
    assert sorted(json.loads(mine.pop("__keys__"))) == sorted(json.loads(orig.pop("__keys__")))
    for key in orig:
        a, b = _decode(mine[key]), _decode(orig[key])
        assert list(a) == list(b)
        for field in b:
            assert a[field].dtype == b[field].dtype == np.float16
            assert a[field].tobytes() == b[field].tobytes(), (key, field)  # bitwise, shape included below
            assert a[field].shape == b[field].shape


def test_default_conversion_matches_original(orig_fixtures, tmp_path):
    summary = convert_imgdir(orig_fixtures / "npz" / "demo_imgs", tmp_path, progress=False)
    orig_dir = orig_fixtures / "img_db" / "demo_imgs"
    _assert_same_db(tmp_path / "feat_th0.2_max100_min10", orig_dir / "feat_th0.2_max100_min10")
    nbb = json.loads((tmp_path / "nbb_th0.2_max100_min10.json").read_text())
    assert nbb == json.loads((orig_dir / "nbb_th0.2_max100_min10.json").read_text())
    assert summary == {"db_dir": str(tmp_path / "feat_th0.2_max100_min10"),
                       "nbb_json": str(tmp_path / "nbb_th0.2_max100_min10.json"),
                       "images": 3, "boxes": 38, "dropped": {}}
    # msgpack records are even byte-identical to the original's
    mine, orig = _records(tmp_path / "feat_th0.2_max100_min10"), _records(orig_dir / "feat_th0.2_max100_min10")
    assert all(mine[k] == orig[k] for k in orig if k != "__keys__")


def test_keep_all_compress_matches_original(orig_fixtures, tmp_path):
    summary = convert_imgdir(orig_fixtures / "npz" / "demo_imgs", tmp_path, keep_all=True, compress=True,
                             progress=False)
    _assert_same_db(tmp_path / "all_compressed", orig_fixtures / "img_db" / "demo_imgs" / "all_compressed")
    assert summary["boxes"] == 12 + 15 + 18 and summary["nbb_json"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all_compressed"]  # no nbb json, as the original


def test_nproc_gives_the_same_db(orig_fixtures, tmp_path):
    convert_imgdir(orig_fixtures / "npz" / "demo_imgs", tmp_path / "one", progress=False)
    convert_imgdir(orig_fixtures / "npz" / "demo_imgs", tmp_path / "two", nproc=2, progress=False)
    assert _records(tmp_path / "one" / "feat_th0.2_max100_min10") == \
        _records(tmp_path / "two" / "feat_th0.2_max100_min10")


def test_cli_runs_from_any_cwd(orig_fixtures, tmp_path, repo_root):
    out = tmp_path / "img_db"
    cmd = [sys.executable, str(repo_root / "scripts" / "convert_imgdir.py"), "--img_dir",
           str(orig_fixtures / "npz" / "demo_imgs"), "--output", str(out), "--conf_th", "0.5", "--min_bb", "2"]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "converted 3 images, 20 boxes kept" in run.stdout and "dropped 0 file(s)" in run.stdout
    db = ImgDb(out, conf_th=0.5, min_bb=2)
    assert db.name2nbb == {"demo_imgs_000000.npz": 5, "demo_imgs_000001.npz": 7, "demo_imgs_000002.npz": 8}
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "feat_th0.5_max100_min2: already exists" in again.stderr


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_bad_files_are_dropped_and_reported(tmp_path):
    src = tmp_path / "npz"
    src.mkdir()
    rng = np.random.default_rng(0)
    good = {"features": rng.standard_normal((4, 3)).astype(np.float32), "norm_bb": np.ones((4, 6), np.float32),
            "conf": np.array([[0.9], [0.8], [0.1], [0.05]], np.float32), "image_h": np.array(480.0, np.float32)}
    (src / "good.npz").write_bytes(_npz_bytes(**good))
    (src / "broken.npz").write_bytes(b"not a zip")
    (src / "noconf.npz").write_bytes(_npz_bytes(features=good["features"], norm_bb=good["norm_bb"]))
    (src / "pickled.npz").write_bytes(_npz_bytes(features=np.array([{"x": 1}], dtype=object)))
    summary = convert_imgdir(src, tmp_path / "out", min_bb=1, progress=False)
    assert summary["images"] == 1 and summary["boxes"] == 2
    assert summary["dropped"]["noconf.npz"] == "no 'conf' array"
    assert summary["dropped"]["broken.npz"].startswith("unreadable npz")
    assert "unreadable npz" in summary["dropped"]["pickled.npz"]  # object arrays are never unpickled
    assert "dropped 3 file(s): broken.npz: unreadable npz" in summary_line(summary)
    out = ImgDb(tmp_path / "out", min_bb=1).get("good.npz")
    np.testing.assert_array_equal(out["features"], good["features"][:2].astype(np.float16).astype(np.float32))


def test_fixed_box_count(orig_fixtures, tmp_path):
    summary = convert_imgdir(orig_fixtures / "npz" / "demo_imgs", tmp_path, conf_th=-1, num_bb=13,
                             progress=False)
    assert summary["db_dir"].endswith("feat_numbb13") and summary["boxes"] == 12 + 13 + 13
    db = ImgDb(tmp_path, conf_th=-1, num_bb=13)
    assert db.get("demo_imgs_000000.npz")["features"].shape == (12, 40)
    assert db.get("demo_imgs_000002.npz")["features"].shape == (13, 40)


def test_errors_leave_no_output(tmp_path):
    with pytest.raises(DataError, match="missing: feature directory not found"):
        convert_imgdir(tmp_path / "missing", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no .npz feature files"):
        convert_imgdir(tmp_path / "empty", tmp_path / "out", progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"bad: none of the 1 .npz files is usable, e.g. \('x.npz', 'unreadable"):
        convert_imgdir(tmp_path / "bad", tmp_path / "out", progress=False)
    assert list((tmp_path / "out").iterdir()) == []
