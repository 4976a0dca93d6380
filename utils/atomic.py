"""Atomic writes: a file or a folder is either the complete new version or the old one (or absent), never
half-written, whatever happens in between (exception, kill, full disk).

Files are written to ``.<name>.tmp-<pid>`` beside the target (same file system, so the rename is atomic),
flushed and fsynced, then renamed over the target. Folders are built in ``<name>.tmp-<pid>`` and renamed
into place by :func:`publish_dir`. Every writer of the project goes through here.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from utils.errors import DataError


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some file systems do not allow opening directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(binary_file)`` on a temp file beside ``path``, fsync it and rename it over ``path``.

    The parent folder is created when missing. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(obj: Any, path: str | Path, *, indent: int | None = 2, sort_keys: bool = True,
                      ensure_ascii: bool = True, default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``obj`` as JSON (with a final newline when indented) atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii, default=default)
    return atomic_write_text(path, text + ("\n" if indent is not None else ""))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` that leaves either the old file or the complete new one."""
    import torch  # local: the text writers above do not need torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


# ----------------------------------------------------------------------------------------------------------
# folders
# ----------------------------------------------------------------------------------------------------------
def temp_dir_for(final_dir: str | os.PathLike) -> Path:
    """The build folder ``<final_dir>.tmp-<pid>`` beside ``final_dir`` (same file system, so the final
    rename is atomic); a stale one left by a crashed run of this pid is removed. Not created."""
    final = Path(final_dir)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def publish_dir(tmp_dir: str | Path, final_dir: str | Path, overwrite: bool,
                before_replace: Callable[[Path], None] | None = None) -> None:
    """Rename a finished build folder to ``final_dir``; replace an existing one only if ``overwrite``
    (else :class:`utils.errors.DataError` naming the folder). ``before_replace(final_dir)`` runs before an
    existing folder is moved aside (e.g. to close LMDB handles on it)."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    if not final_dir.exists():
        os.replace(tmp_dir, final_dir)
        return
    if not overwrite:
        raise DataError(f"{final_dir}: already exists (pass overwrite=True to replace it)")
    if before_replace is not None:
        before_replace(final_dir)
    # Rename the old one aside and delete it afterwards: final_dir is missing only for an instant,
    # never for the time a large rmtree takes.
    old = final_dir.with_name(f"{final_dir.name}.old-{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)
    os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    shutil.rmtree(old)


@contextlib.contextmanager
def atomic_dir(final_dir: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Build a folder atomically: yields a fresh empty build folder; a clean exit publishes it as
    ``final_dir`` (replacing an existing one when ``overwrite``), an exception removes it."""
    tmp = temp_dir_for(final_dir)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        publish_dir(tmp, final_dir, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
