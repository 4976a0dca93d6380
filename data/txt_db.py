"""Text databases ("txt_db") in the UNITER/UC2 format: reader and atomic writer.

A text db is a directory that is an LMDB environment (key: example id as UTF-8; value: ``lz4.frame`` of a
msgpack map, numpy arrays via msgpack-numpy) plus JSON side files ``meta.json``, ``id2len.json``,
``txt2img.json`` and ``img2txts.json``. See ``UC2_FACTS.md`` section 1.1.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import lz4.frame
import msgpack
import msgpack_numpy
import numpy as np

from utils.atomic import atomic_write_json
from utils.errors import DataError, DataKeyError
from data.safe_msgpack import PickledRecordError, unpack_numpy_msgpack
from data.lmdb_env import DEFAULT_MAP_SIZE, LazyEnv, LmdbBuilder, load_json_file

SIDE_FILES = ("meta.json", "id2len.json", "txt2img.json", "img2txts.json")
_REQUIRED_META = ("CLS", "SEP", "MASK")


# --- value encoding --------------------------------------------------------------------------------


def encode_txt_value(value: Mapping) -> bytes:
    """Encode one example as the original ``TxtLmdb`` did: msgpack (bin type on, msgpack-numpy) + lz4."""
    packed = msgpack.packb(value, use_bin_type=True, default=msgpack_numpy.encode)
    return lz4.frame.compress(packed)


def read_txt_value(data: bytes, where: str = "text value") -> dict:
    """Decode one stored example; ``where`` (e.g. ``"db X, key 'k'"``) goes into the error message.

    Integer map keys (the paired examples' ``lang1_lang2_walign``) are allowed.
    """
    try:
        raw = lz4.frame.decompress(data)
    except RuntimeError as exc:  # lz4 reports corrupt frames as RuntimeError
        raise DataError(f"{where}: not a valid lz4 frame ({exc})") from exc
    try:
        value = unpack_numpy_msgpack(raw, where, copy_arrays=True, strict_map_key=False)
    except PickledRecordError:
        raise
    except Exception as exc:  # msgpack and msgpack-numpy raise many types on garbage; all mean "corrupt"
        raise DataError(f"{where}: not a valid msgpack value ({type(exc).__name__}: {exc})") from exc
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a msgpack map, found {type(value).__name__}")
    return value


# --- side-file validation --------------------------------------------------------------------------


def _check_meta(meta: dict, source: str) -> dict:
    for key in _REQUIRED_META:
        if not isinstance(meta.get(key), int):
            raise DataError(f"{source}: key {key!r} must be an integer token id, found {meta.get(key)!r}")
    v_range = meta.get("v_range")
    if v_range is not None and not (isinstance(v_range, list) and len(v_range) == 2
                                    and all(isinstance(v, int) for v in v_range)):
        raise DataError(f"{source}: key 'v_range' must be [low, high] integers, found {v_range!r}")
    return meta


def _check_values(mapping: dict, path: Path, ok, expected: str) -> dict:
    """Raise DataError naming the first entry of ``mapping`` whose value fails ``ok``."""
    for key, value in mapping.items():
        if not ok(value):
            raise DataError(f"{path}: entry {key!r} = {value!r}, expected {expected}")
    return mapping


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_id_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(i, str) for i in v)


# --- reader ----------------------------------------------------------------------------------------


class TxtDb:
    """Read-only text database.

    Args:
        db_dir: the ``NAME.db`` directory.
        max_txt_len: keep only examples with at most this many tokens (``id2len``, no special tokens);
            None keeps all (evaluation).

    Attributes:
        meta: ``meta.json`` (CLS/SEP/MASK ids, ``v_range``, ...).
        id2len, txt2img, img2txts: the side files, for all examples.
        ids: ids of the kept examples, in ``id2len.json`` order; lens: their lengths, aligned with ids.
    """

    def __init__(self, db_dir: str | os.PathLike, max_txt_len: int | None = None):
        self.db_dir = Path(db_dir)
        if not self.db_dir.is_dir():
            raise DataError(f"text db {self.db_dir}: directory not found")
        if not (self.db_dir / "data.mdb").is_file():
            raise DataError(f"text db {self.db_dir}: no data.mdb inside, not an LMDB environment")
        self.meta = _check_meta(load_json_file(self.db_dir / "meta.json", dict, "a JSON object"),
                                str(self.db_dir / "meta.json"))
        self.id2len = self._side("id2len.json", _is_count, "a non-negative integer")
        self.txt2img = self._side("txt2img.json", lambda v: v is None or isinstance(v, str),
                                  "an image file name or null")
        self.img2txts = self._side("img2txts.json", _is_id_list, "a list of example ids")
        kept = [(i, n) for i, n in self.id2len.items() if max_txt_len is None or n <= max_txt_len]
        self.ids: list[str] = [i for i, _ in kept]
        self.lens: list[int] = [n for _, n in kept]
        self._id_set = frozenset(self.ids)
        self._env = LazyEnv(self.db_dir)
        self._env.get()  # open now (cheap, cached): a corrupt data.mdb is reported before a run starts

    def _side(self, name: str, ok, expected: str) -> dict:
        path = self.db_dir / name
        data = load_json_file(path, dict, f"a JSON object whose values are each {expected}")
        return _check_values(data, path, ok, expected)

    # Token ids under the original TxtTokLmdb attribute names.
    @property
    def cls_(self) -> int:
        return self.meta["CLS"]

    @property
    def sep(self) -> int:
        return self.meta["SEP"]

    @property
    def mask(self) -> int:
        return self.meta["MASK"]

    @property
    def v_range(self) -> tuple[int, int] | None:
        vr = self.meta.get("v_range")
        return None if vr is None else (vr[0], vr[1])

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, id_: object) -> bool:
        """True for the kept examples (those in ``ids``)."""
        return id_ in self._id_set

    def __getitem__(self, id_: str) -> dict:
        """The decoded example stored under ``id_`` (any stored id, kept or not); arrays are writable."""
        data = self._env.read(str(id_).encode("utf-8"))
        if data is None:
            raise DataKeyError(f"text db {self.db_dir}: no example with key {id_!r}")
        return read_txt_value(data, where=f"text db {self.db_dir}, key {id_!r}")

    def __repr__(self) -> str:
        return f"TxtDb({str(self.db_dir)!r}, {len(self.ids)} of {len(self.id2len)} examples)"


# --- writer ----------------------------------------------------------------------------------------


def _check_example(key: str, value, db_dir: Path) -> list[int]:
    """Validate one example for ``TxtDbWriter.add``; return its ``input_ids`` as a list of ints."""
    where = f"text db {db_dir}, key {key!r}"
    if not isinstance(value, Mapping):
        raise DataError(f"{where}: value must be a dict, found {type(value).__name__}")
    if "input_ids" not in value or "img_fname" not in value:
        raise DataError(f"{where}: value must contain 'input_ids' and 'img_fname' "
                        f"(found keys {sorted(map(str, value))})")
    ids = value["input_ids"]
    if isinstance(ids, np.ndarray) and ids.ndim == 1 and np.issubdtype(ids.dtype, np.integer):
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)) or not all(
            isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
        raise DataError(f"{where}: 'input_ids' must be a list of int token ids")
    fname = value["img_fname"]
    if fname is not None and not isinstance(fname, str):
        raise DataError(f"{where}: 'img_fname' must be a string or None, found {fname!r}")
    if "n_tokens" in value and not _is_count(value["n_tokens"]):
        raise DataError(f"{where}: 'n_tokens' must be a non-negative int, found {value['n_tokens']!r}")
    return [int(i) for i in ids]


class TxtDbWriter:
    """Write a text database atomically; use as a context manager.

    ``add`` records ``id2len`` (``len(input_ids)`` unless the value has ``n_tokens``), ``txt2img`` and
    ``img2txts``. Everything is built in ``<db_dir>.tmp-<pid>``; a clean exit writes the side files and
    renames it to ``db_dir``, an exception removes it. An existing ``db_dir`` is refused unless
    ``overwrite``.
    """

    def __init__(self, db_dir: str | os.PathLike, meta: dict, overwrite: bool = False,
                 map_size: int = DEFAULT_MAP_SIZE, commit_every: int = 1000):
        self.db_dir = Path(db_dir)
        if not isinstance(meta, dict):
            raise DataError(f"text db {self.db_dir}: meta must be a dict, found {type(meta).__name__}")
        self.meta = _check_meta(dict(meta), f"text db {self.db_dir}, meta")
        if self.db_dir.exists() and not overwrite:
            raise DataError(f"{self.db_dir}: already exists (pass overwrite=True to replace it)")
        self.id2len: dict[str, int] = {}
        self.txt2img: dict[str, str | None] = {}
        self.img2txts: dict[str, list[str]] = {}
        self.extra_json: dict[str, object] = {}
        self._builder = LmdbBuilder(self.db_dir, overwrite, map_size, commit_every)

    def __enter__(self) -> "TxtDbWriter":
        self._builder.open()
        return self

    def add(self, key: str, value: Mapping) -> None:
        """Store example ``value`` (dict with ``input_ids`` and ``img_fname``) under id ``key``."""
        if not isinstance(key, str) or not key:
            raise DataError(f"text db {self.db_dir}: key must be a non-empty str, found {key!r}")
        where = f"text db {self.db_dir}, key {key!r}"
        if key in self.id2len:
            raise DataError(f"{where}: added twice")
        ids = _check_example(key, value, self.db_dir)
        value = {**value, "input_ids": ids}
        try:
            data = encode_txt_value(value)
        except TypeError as exc:
            raise DataError(f"{where}: value cannot be stored as msgpack ({exc})") from exc
        self._builder.put(key.encode("utf-8"), data, where)
        self.id2len[key] = value.get("n_tokens", len(ids))
        self.txt2img[key] = value["img_fname"]
        if value["img_fname"] is not None:
            self.img2txts.setdefault(value["img_fname"], []).append(key)

    def add_json(self, name: str, value) -> None:
        """Add one more JSON side file (e.g. ``ans2label.json``), published together with the db."""
        if not name.endswith(".json") or "/" in name or name in SIDE_FILES:
            raise DataError(f"text db {self.db_dir}: side file {name!r} must be a new '*.json' file name")
        self.extra_json[name] = value

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self._builder.close_env()
                sides = dict(zip(SIDE_FILES, (self.meta, self.id2len, self.txt2img, self.img2txts)))
                for name, side in {**sides, **self.extra_json}.items():
                    atomic_write_json(side, self._builder.tmp_dir / name, indent=None, sort_keys=False)
                self._builder.publish()
        finally:
            self._builder.discard()
        return False
