"""Read-only tables that data-loader workers share instead of copying.

A dataset over 20 M captions holds per-example tables (caption ids, image of each caption, lengths). As
Python dicts and lists they cost ~300 B per caption and every worker process unpickled its own copy. Here
they are numpy arrays; when a dataset is pickled for a worker (forkserver/spawn), each array is written
ONCE to a file in a shared-memory directory and the worker memory-maps it read-only, so all workers of
all tasks read the same physical pages and the pickle holds only a path.

The files live in ``$UC2_SHARED_DIR``, else ``/dev/shm`` when writable, else the temp directory; the
creating process deletes each one when its table is garbage collected or at exit (a worker that mapped it
keeps reading it: an unlinked file stays mapped).
"""
from __future__ import annotations

import bisect
import os
import tempfile
import weakref
from collections.abc import Sequence

import numpy as np


def shared_dir() -> str:
    """Directory for the spilled table files."""
    chosen = os.environ.get("UC2_SHARED_DIR")
    if chosen:
        return chosen
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class SharedArray:
    """A read-only numpy array that pickles as the path of a memory-mappable copy of itself."""

    def __init__(self, array: np.ndarray | Sequence):
        self.array = np.ascontiguousarray(array)
        self.array.flags.writeable = False
        self._path: str | None = None

    def _spill(self) -> str:
        fd, path = tempfile.mkstemp(prefix=f"uc2-table-{os.getpid()}-", suffix=".npy", dir=shared_dir())
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, self.array, allow_pickle=False)
        except BaseException:
            _unlink(path)
            raise
        weakref.finalize(self, _unlink, path)  # only the creator deletes it
        return path

    def __getstate__(self) -> dict:
        if self._path is None:
            self._path = self._spill()
        return {"path": self._path}

    def __setstate__(self, state: dict) -> None:
        self._path = state["path"]
        self.array = np.load(self._path, mmap_mode="r", allow_pickle=False)

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index):
        return self.array[index]


class StringTable:
    """Strings (N,) as one UTF-8 byte buffer plus (N + 1,) offsets, both :class:`SharedArray`.

    ``table[i]`` is the i-th string; :meth:`find` looks a string up by binary search when the table was
    built sorted (``sorted_=True``).
    """

    def __init__(self, strings: Sequence[str], sorted_: bool = False):
        strings = list(strings)
        self.sorted = sorted_
        if sorted_ and any(a > b for a, b in zip(strings, strings[1:])):
            raise ValueError("StringTable(sorted_=True): strings are not in sorted order")
        buffer = "".join(strings).encode("utf-8")
        lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
        if len(buffer) != int(lengths.sum()):  # some non-ASCII string: count bytes, not characters
            lengths = np.fromiter((len(s.encode("utf-8")) for s in strings), dtype=np.int64, count=len(strings))
        self._offsets = SharedArray(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        self._bytes = SharedArray(np.frombuffer(buffer, dtype=np.uint8))

    @classmethod
    def from_buffer(cls, buffer: np.ndarray, offsets: np.ndarray, sorted_: bool = False) -> "StringTable":
        """A table over an existing UTF-8 byte buffer (uint8) and its (N + 1,) offsets (no per-string work)."""
        table = cls.__new__(cls)
        table.sorted = sorted_
        table._offsets = SharedArray(np.asarray(offsets, dtype=np.int64))
        table._bytes = SharedArray(np.asarray(buffer, dtype=np.uint8))
        return table

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        if not -len(self) <= i < len(self):
            raise IndexError(f"string table index {i} outside 0..{len(self) - 1}")
        i %= len(self)
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        return bytes(self._bytes.array[a:b]).decode("utf-8")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StringTable):
            return NotImplemented
        return (np.array_equal(self._offsets.array, other._offsets.array)
                and np.array_equal(self._bytes.array, other._bytes.array))

    __hash__ = None  # mutable-free but large: compared by content, never hashed

    def find(self, s: str) -> int:
        """Index of ``s`` in a sorted table, or -1 (O(log N) string reads)."""
        if not self.sorted:
            raise ValueError("StringTable.find needs a table built with sorted_=True")
        # bisect over byte strings: UTF-8 byte order equals code point order, as Python's str order.
        keys = _BytesView(self)
        i = bisect.bisect_left(keys, s.encode("utf-8"))
        return i if i < len(self) and keys[i] == s.encode("utf-8") else -1

    def tolist(self) -> list[str]:
        raw = self._bytes.array.tobytes()
        text = raw.decode("utf-8")
        bounds = self._offsets.array.tolist()
        if len(text) != len(raw):  # non-ASCII: byte offsets are not character offsets
            return [raw[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:])]
        return [text[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


class _BytesView:
    """Sequence view of a StringTable's entries as bytes (what bisect compares)."""

    def __init__(self, table: StringTable):
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> bytes:
        a, b = int(self.table._offsets[i]), int(self.table._offsets[i + 1])
        return bytes(self.table._bytes.array[a:b])


class MainProcessTables:
    """Mixin for database readers: the attributes named in ``SIDE_TABLES`` (one entry per example or
    image) are left out when the reader is pickled for a worker, and reading one there raises an error
    that says so instead of a bare AttributeError."""

    SIDE_TABLES: frozenset[str] = frozenset()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in self.SIDE_TABLES}

    def __getattr__(self, name: str):
        if name in type(self).SIDE_TABLES:  # only reached when the attribute is missing: a worker's copy
            raise AttributeError(f"{type(self).__name__} {self.__dict__.get('db_dir')}: '{name}' is not shipped "
                                 f"to worker processes (read it in the main process)")
        raise AttributeError(name)
