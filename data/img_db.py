"""Image feature databases ("img_db") in the UNITER/UC2 format: reader and atomic writer.

An image set directory holds one or more LMDB sub-directories, named by how boxes were kept:
``feat_th{conf_th}_max{max_bb}_min{min_bb}`` (confidence rule), ``feat_numbb{num_bb}`` (fixed count) or
``all``, each possibly with a ``_compressed`` suffix, and beside them
``nbb_th{conf_th}_max{max_bb}_min{min_bb}.json`` = ``{img_fname: number of boxes}``. Keys are image file
names plus ``__keys__`` (JSON list of names). Values are msgpack-numpy maps of float16 arrays, or
``np.savez_compressed`` bytes in the compressed variants. See ``UC2_FACTS.md`` section 1.2.
"""
from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import msgpack
import msgpack_numpy
import numpy as np

from utils.atomic import atomic_write_json
from utils.errors import DataError, DataKeyError
from data.safe_msgpack import PickledRecordError, unpack_numpy_msgpack
from data.lmdb_env import DEFAULT_MAP_SIZE, LazyEnv, LmdbBuilder, load_json_file

logger = logging.getLogger(__name__)

KEYS_KEY = b"__keys__"
_ZIP_MAGIC = b"PK\x03\x04"  # np.savez writes a zip archive; msgpack maps never start with "P"
_OUTPUT_FIELDS = ("features", "norm_bb", "conf", "soft_labels")


def compute_num_bb(conf: np.ndarray, conf_th: float, max_bb: int, min_bb: int) -> int:
    """Boxes to keep: ``min(max_bb, max(min_bb, count(conf > conf_th)))``; conf is (n,) or (n, 1)."""
    return int(min(max_bb, max(min_bb, int((np.asarray(conf) > conf_th).sum()))))


def _th_names(conf_th: float) -> list[str]:
    # The converter's argparse gives floats ("0.2", "-1.0"); a config may give an int ("0"): try both.
    return list(dict.fromkeys([f"{conf_th}", f"{float(conf_th)}"]))


def rule_db_names(conf_th: float, max_bb: int, min_bb: int, num_bb: int) -> list[str]:
    """Uncompressed sub-LMDB names for a box rule, most specific first (without ``all``)."""
    if conf_th == -1:
        return [f"feat_numbb{num_bb}"]
    return [f"feat_th{th}_max{max_bb}_min{min_bb}" for th in _th_names(conf_th)]


def nbb_json_names(conf_th: float, max_bb: int, min_bb: int) -> list[str]:
    """Candidate file names of the ``{img_fname: nbb}`` side file for a confidence rule."""
    return [f"nbb_th{th}_max{max_bb}_min{min_bb}.json" for th in _th_names(conf_th)]


def decode_img_value(data: bytes, where: str) -> dict[str, np.ndarray]:
    """Decode one stored image (msgpack-numpy map or savez bytes) into read-only float16 arrays.

    Pickled (object) arrays are refused: a feature file is data, never code.
    """
    try:
        if data[:4] == _ZIP_MAGIC:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                value = {k: npz[k] for k in npz.files}
        else:
            value = unpack_numpy_msgpack(data, where)
    except PickledRecordError:
        raise
    except Exception as exc:  # numpy/zipfile/msgpack raise many types on garbage; all mean "corrupt"
        raise DataError(f"{where}: not a valid image record ({type(exc).__name__}: {exc})") from exc
    if not isinstance(value, dict) or not isinstance(value.get("features"), np.ndarray):
        raise DataError(f"{where}: expected a map with a 'features' array")
    return value


def img_db_name(conf_th: float = 0.2, max_bb: int = 100, min_bb: int = 10, num_bb: int = 36,
                keep_all: bool = False, compress: bool = False) -> str:
    """Sub-LMDB name the converter writes for these options (as UNITER's ``convert_imgdir``)."""
    if keep_all:
        name = "all"
    elif conf_th == -1:
        name = f"feat_numbb{num_bb}"
    else:
        name = f"feat_th{float(conf_th)}_max{max_bb}_min{min_bb}"
    return name + "_compressed" if compress else name


def _float32_rows(arr: np.ndarray, n: int) -> np.ndarray:
    """First ``n`` rows as a new writable float32 array."""
    return np.array(arr[:n], dtype=np.float32)


class ImgDb:
    """Read-only image feature database of one image set.

    Args:
        img_dir: the image set directory (holding ``feat_th...`` / ``all`` sub-LMDBs).
        conf_th, max_bb, min_bb: the box rule; ``conf_th == -1`` selects ``feat_numbb{num_bb}``.
        compressed: pick the ``_compressed`` variant (True), the plain one (False) or whichever exists,
            plain first (None). When the rule's sub-LMDB is missing, ``all`` is used, as the original.
        keep_all: read the ``all`` variant and keep every stored box.

    Attributes:
        db_dir: the sub-LMDB chosen; names: image names (``__keys__``); name2nbb: boxes used per image;
        feat_dim: feature width D (2048 for BUTD features); label_dim: soft-label width C or None.
    """

    def __init__(self, img_dir: str | os.PathLike, conf_th: float = 0.2, max_bb: int = 100,
                 min_bb: int = 10, num_bb: int = 36, compressed: bool | None = None,
                 keep_all: bool = False):
        self.img_dir = Path(img_dir)
        if not self.img_dir.is_dir():
            raise DataError(f"image db {self.img_dir}: directory not found")
        self.conf_th, self.max_bb, self.min_bb, self.num_bb = conf_th, max_bb, min_bb, num_bb
        self.keep_all = keep_all
        self.db_dir = self._find_db(compressed)
        self.compressed = self.db_dir.name.endswith("_compressed")
        self._env = LazyEnv(self.db_dir)
        self.names: list[str] = self._read_names()
        if not self.names:
            raise DataError(f"image db {self.db_dir}: holds no images")
        self._name_set = frozenset(self.names)
        first = self._read(self.names[0])
        self.feat_dim = self._check_shapes(first, self.names[0], feat_dim=None)
        labels = first.get("soft_labels")
        self.label_dim: int | None = labels.shape[1] if isinstance(labels, np.ndarray) else None
        self.name2nbb: dict[str, int] = self._load_name2nbb()

    def _find_db(self, compressed: bool | None) -> Path:
        bases = ["all"] if self.keep_all else rule_db_names(
            self.conf_th, self.max_bb, self.min_bb, self.num_bb) + ["all"]
        suffixes = {None: ["", "_compressed"], False: [""], True: ["_compressed"]}[compressed]
        tried = [b + s for b in bases for s in suffixes]
        for name in tried:
            if (self.img_dir / name / "data.mdb").is_file():
                return self.img_dir / name
        found = sorted(p.name for p in self.img_dir.iterdir() if (p / "data.mdb").is_file())
        raise DataError(f"image db {self.img_dir}: no feature LMDB for conf_th={self.conf_th} "
                        f"max_bb={self.max_bb} min_bb={self.min_bb} num_bb={self.num_bb} "
                        f"compressed={compressed}; tried {tried}, found {found}")

    def _read_names(self) -> list[str]:
        raw = self._env.read(KEYS_KEY)
        if raw is None:
            # Not every writer stored __keys__: list the LMDB keys instead (keys only, cheap).
            with self._env.get().begin() as txn:
                return [k.decode("utf-8") for k in txn.cursor().iternext(keys=True, values=False)]
        try:
            names = json.loads(bytes(raw).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"image db {self.db_dir}, key '__keys__': not valid JSON ({exc})") from exc
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"image db {self.db_dir}, key '__keys__': expected a JSON list of names")
        return names

    def _read(self, fname: str) -> dict[str, np.ndarray]:
        where = f"image db {self.db_dir}, key {fname!r}"
        data = self._env.read(fname.encode("utf-8"))
        if data is None:
            raise DataKeyError(f"{where}: listed in __keys__ but not stored")
        return decode_img_value(data, where)

    def _check_shapes(self, rec: dict, fname: str, feat_dim: int | None) -> int:
        """Check ``features`` (n, D) and ``norm_bb`` (n, 6); return D."""
        where = f"image db {self.db_dir}, key {fname!r}"
        feats, bb = rec["features"], rec.get("norm_bb")
        if feats.ndim != 2 or (feat_dim is not None and feats.shape[1] != feat_dim):
            raise DataError(f"{where}: 'features' has shape {feats.shape}, expected (n, {feat_dim or 'D'})"
                            " with D the width of the db's first record")
        if not isinstance(bb, np.ndarray) or bb.shape != (feats.shape[0], 6):
            shape = getattr(bb, "shape", None)
            raise DataError(f"{where}: 'norm_bb' has shape {shape}, expected ({feats.shape[0]}, 6)")
        return feats.shape[1]

    def _load_name2nbb(self) -> dict[str, int]:
        if self.keep_all:
            return self._scan_nbb(lambda rec: rec["features"].shape[0])
        if self.conf_th == -1:
            return {name: self.num_bb for name in self.names}
        for json_name in nbb_json_names(self.conf_th, self.max_bb, self.min_bb):
            path = self.img_dir / json_name
            if path.is_file():
                return self._check_nbb_json(path)
        # The original crashed here; the counts follow from the stored confidences.
        logger.warning("image db %s: %s not found, computing box counts from the stored 'conf' "
                       "(reads every record once)", self.img_dir,
                       nbb_json_names(self.conf_th, self.max_bb, self.min_bb)[0])
        return self._scan_nbb(self._nbb_from_conf)

    def _check_nbb_json(self, path: Path) -> dict[str, int]:
        name2nbb = load_json_file(path, dict, "a JSON object {img_fname: number of boxes}")
        for name, nbb in name2nbb.items():
            if not isinstance(nbb, int) or isinstance(nbb, bool) or nbb < 0:
                raise DataError(f"{path}: entry {name!r} = {nbb!r}, expected a non-negative integer")
        missing = [n for n in self.names if n not in name2nbb]
        if missing:
            raise DataError(f"{path}: no box count for {len(missing)} image(s) of {self.db_dir}, "
                            f"e.g. {missing[:3]}")
        return name2nbb

    def _nbb_from_conf(self, rec: dict) -> int:
        conf = rec.get("conf")
        if not isinstance(conf, np.ndarray):
            raise DataError(f"image db {self.db_dir}: a record has no 'conf' array, so box counts "
                            "cannot be computed without the nbb_*.json file")
        return compute_num_bb(conf.astype(np.float32), self.conf_th, self.max_bb, self.min_bb)

    def _scan_nbb(self, count) -> dict[str, int]:
        return {name: int(count(self._read(name))) for name in self.names}

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, fname: object) -> bool:
        return fname in self._name_set

    def get(self, fname: str) -> dict[str, np.ndarray]:
        """Features of one image, cut to its first ``name2nbb[fname]`` boxes (n of them, at most).

        Returns writable float32 arrays: ``features`` (n, D), ``norm_bb`` (n, 6), ``pos_feat`` (n, 7)
        = [x1, y1, x2, y2, w, h, w*h], and when stored ``conf`` (n, 1) and ``soft_labels`` (n, C).
        """
        if fname not in self._name_set:
            raise DataKeyError(f"image db {self.db_dir}: no image named {fname!r}")
        rec = self._read(fname)
        self._check_shapes(rec, fname, self.feat_dim)
        n = min(self.name2nbb[fname], rec["features"].shape[0])
        out = {k: _float32_rows(rec[k], n) for k in _OUTPUT_FIELDS if isinstance(rec.get(k), np.ndarray)}
        bb = out["norm_bb"]
        out["pos_feat"] = np.concatenate([bb, bb[:, 4:5] * bb[:, 5:6]], axis=1)
        return out

    __getitem__ = get

    def __repr__(self) -> str:
        return f"ImgDb({str(self.db_dir)!r}, {len(self.names)} images, D={self.feat_dim})"


# --- writer ----------------------------------------------------------------------------------------


def _prepare_arrays(arrays: Mapping, where: str) -> dict[str, np.ndarray]:
    """Validate one image's arrays and convert float ones to float16, as the original converter."""
    if not isinstance(arrays, Mapping):
        raise DataError(f"{where}: expected a dict of arrays, found {type(arrays).__name__}")
    out = {}
    for key, arr in arrays.items():
        if not isinstance(key, str) or not isinstance(arr, np.ndarray) or arr.dtype == object:
            raise DataError(f"{where}: entry {key!r} must be a numeric numpy array")
        out[key] = arr.astype(np.float16) if np.issubdtype(arr.dtype, np.floating) else arr
    feats, bb = out.get("features"), out.get("norm_bb")
    if feats is None or feats.ndim != 2:
        raise DataError(f"{where}: needs a 2-d 'features' array (n, D)")
    if bb is None or bb.shape != (feats.shape[0], 6):
        raise DataError(f"{where}: needs 'norm_bb' of shape ({feats.shape[0]}, 6), "
                        f"found {getattr(bb, 'shape', None)}")
    return out


def encode_img_value(arrays: Mapping[str, np.ndarray], compress: bool) -> bytes:
    """Bytes of one image record: ``np.savez_compressed`` archive or msgpack-numpy map."""
    if compress:
        with io.BytesIO() as buf:
            np.savez_compressed(buf, **arrays)
            return buf.getvalue()
    return msgpack.packb(dict(arrays), use_bin_type=True, default=msgpack_numpy.encode)


class ImgDbWriter:
    """Write one image-feature sub-LMDB (plus ``__keys__`` and the nbb json) atomically.

    Use as a context manager. The sub-LMDB is ``img_dir/img_db_name(...)``; the nbb json
    ``nbb_th{conf_th}_max{max_bb}_min{min_bb}.json`` is written beside it for the confidence rule only
    (as the original). ``add`` stores the arrays it is given (float arrays as float16): cutting boxes is
    the caller's job (see ``scripts/convert_imgdir.py``).
    """

    def __init__(self, img_dir: str | os.PathLike, conf_th: float = 0.2, max_bb: int = 100,
                 min_bb: int = 10, num_bb: int = 36, keep_all: bool = False, compress: bool = False,
                 overwrite: bool = False, map_size: int = DEFAULT_MAP_SIZE, commit_every: int = 1000):
        self.img_dir = Path(img_dir)
        self.compress = compress
        self.db_dir = self.img_dir / img_db_name(conf_th, max_bb, min_bb, num_bb, keep_all, compress)
        self.nbb_path: Path | None = None
        if conf_th != -1 and not keep_all:
            self.nbb_path = self.img_dir / nbb_json_names(float(conf_th), max_bb, min_bb)[0]
        if self.db_dir.exists() and not overwrite:
            raise DataError(f"{self.db_dir}: already exists (pass overwrite=True to replace it)")
        self.name2nbb: dict[str, int] = {}
        self._builder = LmdbBuilder(self.db_dir, overwrite, map_size, commit_every)

    def __enter__(self) -> "ImgDbWriter":
        self._builder.open()
        return self

    def add(self, fname: str, arrays: Mapping[str, np.ndarray], nbb: int | None = None) -> None:
        """Store one image's arrays (``features`` (n, D), ``norm_bb`` (n, 6), ...); ``nbb`` defaults
        to n and goes into the nbb json."""
        where = f"image db {self.db_dir}, key {fname!r}"
        if not isinstance(fname, str) or not fname or fname == KEYS_KEY.decode():
            raise DataError(f"{where}: image name must be a non-empty str other than '__keys__'")
        if fname in self.name2nbb:
            raise DataError(f"{where}: added twice")
        arrays = _prepare_arrays(arrays, where)
        self._builder.put(fname.encode("utf-8"), encode_img_value(arrays, self.compress), where)
        self.name2nbb[fname] = arrays["features"].shape[0] if nbb is None else int(nbb)

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                keys = json.dumps(list(self.name2nbb)).encode("utf-8")
                self._builder.put(KEYS_KEY, keys, f"image db {self.db_dir}, key '__keys__'")
                self._builder.close_env()
                self._builder.publish()
                if self.nbb_path is not None:
                    atomic_write_json(self.name2nbb, self.nbb_path, indent=None, sort_keys=False)
        finally:
            self._builder.discard()
        return False
