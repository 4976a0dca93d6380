"""Per-process cache of LMDB environments.

lmdb (py-lmdb 1.x/3.x) refuses to open the same path twice in one process, and an environment inherited
through ``fork`` must not be used by the child. So environments are cached per ``(pid, realpath)``: every
process opens its own copy on first use, and code in one process that asks twice gets the same object.

Objects that read databases should hold a :class:`LazyEnv` (a path plus a per-process handle), which
pickles as just the path, so that ``spawn`` DataLoader workers can receive them.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import lmdb

from utils.atomic import publish_dir, temp_dir_for
from utils.errors import DataError

#: Default map size for writable environments. LMDB reserves address space, not disk, so 1 TiB is
#: what the original UNITER tooling used and costs nothing on 64-bit Linux.
DEFAULT_MAP_SIZE = 1 << 40

# The cache must be module-level: its whole point is to be shared by every reader in this process.
# After fork, the child inherits the parent's entries (and py-lmdb's record of open files, so a plain
# reopen is refused): the child closes its inherited copy before opening its own. That is safe: LMDB
# clears only the calling process's reader slots on close, and fcntl locks are never inherited.
_ENV_CACHE: dict[tuple[int, str], tuple[lmdb.Environment, bool]] = {}
_CACHE_LOCK = threading.Lock()


def _check_lmdb_dir(path: str | os.PathLike, readonly: bool) -> str:
    """Return the real path of an LMDB directory, or raise a DataError saying what is wrong."""
    p = Path(path)
    if readonly:
        if not p.exists():
            raise DataError(f"LMDB environment {p}: directory not found")
        if not p.is_dir():
            raise DataError(f"LMDB environment {p}: expected a directory, found a file")
        if not (p / "data.mdb").is_file():
            raise DataError(f"LMDB environment {p}: no data.mdb inside, this is not an LMDB environment")
    elif p.exists() and not p.is_dir():
        raise DataError(f"LMDB environment {p}: expected a directory, found a file")
    return os.path.realpath(p)


def _open_env(real: str, readonly: bool, map_size: int) -> lmdb.Environment:
    try:
        if readonly:
            # lock=False: the databases are static while read, and a read-only mount has no lock file
            # to write; readahead=False: random access over a large file, readahead only evicts pages.
            return lmdb.open(real, readonly=True, create=False, lock=False, readahead=False)
        return lmdb.open(real, readonly=False, create=True, map_size=map_size)
    except lmdb.Error as exc:
        # "already open in this process" here means it was opened outside open_lmdb().
        raise DataError(f"LMDB environment {real}: cannot open ({exc})") from exc


def open_lmdb(path: str | os.PathLike, readonly: bool = True,
              map_size: int = DEFAULT_MAP_SIZE) -> lmdb.Environment:
    """Return this process's environment for ``path``, opening it on first use.

    A read-only request is served by a cached writable environment too; a writable request for a path
    cached read-only is an error (LMDB cannot hold both).
    """
    real = _check_lmdb_dir(path, readonly)
    key = (os.getpid(), real)
    with _CACHE_LOCK:
        cached = _ENV_CACHE.get(key)
        if cached is not None:
            env, cached_readonly = cached
            if cached_readonly and not readonly:
                raise DataError(f"LMDB environment {real}: already open read-only in this process; "
                                "close it with close_lmdb() before opening it for writing")
            return env
        _close_inherited(real)
        env = _open_env(real, readonly, map_size)
        _ENV_CACHE[key] = (env, readonly)
        return env


def _close_inherited(real: str) -> None:
    """Close the copies of ``real``'s environment inherited from a parent process (caller holds the lock)."""
    pid = os.getpid()
    for key in [k for k in _ENV_CACHE if k[1] == real and k[0] != pid]:
        _ENV_CACHE.pop(key)[0].close()


def close_lmdb(path: str | os.PathLike) -> bool:
    """Close and forget this process's cached environment for ``path``; True if there was one.

    Writers call this before replacing a database directory, so that no stale handle outlives it.
    """
    key = (os.getpid(), os.path.realpath(path))
    with _CACHE_LOCK:
        cached = _ENV_CACHE.pop(key, None)
    if cached is None:
        return False
    cached[0].close()
    return True


class LazyEnv:
    """A picklable handle on a read-only LMDB environment, opened in each process on first use.

    It holds only paths (the environment lives in the per-process cache), so it pickles for spawn
    workers and, after fork, the child's first ``get`` misses the cache and opens its own copy.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._real: str | None = None

    def get(self) -> lmdb.Environment:
        """The environment for the current process (reopened after fork, via the per-pid cache)."""
        if self._real is not None:
            # Fast path: a dict lookup, no filesystem calls; misses after fork or close_lmdb().
            cached = _ENV_CACHE.get((os.getpid(), self._real))
            if cached is not None:
                return cached[0]
        env = open_lmdb(self.path, readonly=True)
        self._real = os.path.realpath(self.path)
        return env

    def read(self, key: bytes) -> bytes | None:
        """Value stored under ``key`` (a copy, safe after the transaction ends), or None."""
        with self.get().begin(buffers=False) as txn:
            return txn.get(key)


# --- helpers shared by the database readers and writers ------------------------------------------


def load_json_file(path: str | os.PathLike, expected: type, what: str):
    """Load a JSON side file, raising DataError naming the file unless it holds a ``expected`` value.

    ``what`` describes the expected content for the message, e.g. ``"an object {id: length}"``.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found (expected {what})")
    try:
        with open(p, encoding="utf-8") as f:
            value = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{p}: not valid JSON ({exc}); expected {what}") from exc
    if not isinstance(value, expected):
        raise DataError(f"{p}: expected {what}, found a JSON {type(value).__name__}")
    return value


class LmdbBuilder:
    """Builds a new LMDB environment in ``<final_dir>.tmp-<pid>`` and publishes it by renaming.

    The writers' shared plumbing: bounded write transactions, and no half-written output (``discard``
    removes the build directory; ``publish`` refuses an existing ``final_dir`` unless ``overwrite``).
    """

    def __init__(self, final_dir: str | os.PathLike, overwrite: bool = False,
                 map_size: int = DEFAULT_MAP_SIZE, commit_every: int = 1000):
        self.final_dir = Path(final_dir)
        self.overwrite = overwrite
        self.map_size = map_size
        self.commit_every = commit_every
        self.tmp_dir: Path | None = None
        self._env: lmdb.Environment | None = None
        self._txn: lmdb.Transaction | None = None
        self._pending = 0

    def open(self) -> None:
        if self.final_dir.exists() and not self.overwrite:
            raise DataError(f"{self.final_dir}: already exists (pass overwrite=True to replace it)")
        self.tmp_dir = temp_dir_for(self.final_dir)
        self.tmp_dir.parent.mkdir(parents=True, exist_ok=True)
        # Not through the cache: this environment is private to the builder and closed by it.
        self._env = lmdb.open(str(self.tmp_dir), map_size=self.map_size, create=True)
        self._txn = self._env.begin(write=True)

    def put(self, key: bytes, value: bytes, where: str) -> None:
        """Store one value; ``where`` names the record in error messages."""
        if self._txn is None:
            raise RuntimeError(f"{where}: writer used outside its `with` block")
        try:
            self._txn.put(key, value)
        except lmdb.BadValsizeError as exc:
            raise DataError(f"{where}: key too long for LMDB ({len(key)} bytes, max 511)") from exc
        self._pending += 1
        if self._pending >= self.commit_every:
            # Bounded transactions, as the original: one huge transaction holds every dirty page.
            self._txn.commit()
            self._txn = self._env.begin(write=True)
            self._pending = 0

    def close_env(self) -> None:
        """Commit and close the environment; side files may then be added to ``tmp_dir``."""
        self._txn.commit()
        self._txn = None
        self._env.close()
        self._env = None

    def publish(self) -> None:
        publish_dir(self.tmp_dir, self.final_dir, self.overwrite, before_replace=close_lmdb)

    def discard(self) -> None:
        """Abort whatever is open and remove the build directory (safe to call after publish)."""
        if self._txn is not None:
            self._txn.abort()
        if self._env is not None:
            self._env.close()
        self._txn = self._env = None
        if self.tmp_dir is not None and self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
