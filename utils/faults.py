"""Machine faults and process hygiene: signals, full disks, run locks, leftovers of dead writers.

A user who stops a run (Ctrl-C, ``kill``, a scheduler's SIGTERM), runs out of disk, or starts a second run
on the same output directory gets one line saying what happened and what was kept, never a traceback, and
nothing half-written is left behind. The pieces:

- :func:`handle_termination` turns SIGTERM into :class:`Interrupted` (a ``KeyboardInterrupt``), so the
  ``except BaseException`` clean-up of every atomic writer runs, exactly as for Ctrl-C;
- :func:`disk_full_guard` turns ``ENOSPC``/``EDQUOT`` into :class:`DiskFullError` naming the path;
- :class:`RunLock` keeps two runs out of one output directory (``OUT/.run.lock`` holds pid and host; a
  lock of a dead process on this host is taken over with a warning);
- :func:`clean_stale_temps` removes ``*.tmp-<pid>`` files and folders of writers that are no longer alive.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from utils.errors import UC2Error

LOG = logging.getLogger(__name__)

#: The temporary names this project's writers use: ``.NAME.tmp-<pid>``, ``NAME.tmp-<pid>``, ``DIR.tmp-<pid>``,
#: ``DIR.old-<pid>`` (and mkstemp names ``.NAME.tmp-XXXX...`` that carry no pid).
_TEMP_RE = re.compile(r"\.(?:tmp|old)-(\d+)(?:\.[A-Za-z0-9]+)?$")

_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class RunError(UC2Error, RuntimeError):
    """A run cannot go on (a fault, not bad input); the message names the file and says what to do."""


class NonFiniteLossError(RunError):
    """The loss (or the weights) became NaN/Inf; the checkpoints on disk are kept as they were."""


class DiskFullError(RunError, OSError):
    """No space left on the device (or the quota is used up) while writing the named path."""

    def __init__(self, message: str, path: str | os.PathLike) -> None:
        super().__init__(message)
        self.errno, self.filename = errno.ENOSPC, str(path)

    def __str__(self) -> str:
        return str(self.args[0])


class RunLockError(RunError):
    """Another live process holds the output directory."""


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM); a KeyboardInterrupt so that clean-up code runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ------------------------------------------------------------------------------------------------ signals
def handle_termination() -> Any:
    """Raise :class:`Interrupted` in the main thread on SIGTERM (Ctrl-C already raises KeyboardInterrupt);
    returns the handler it replaced (for :func:`restore_termination`), None outside the main thread."""
    def on_signal(signum: int, _frame) -> None:
        raise Interrupted(signum)
    with contextlib.suppress(ValueError):  # not the main thread (e.g. inside a test runner's worker)
        return signal.signal(signal.SIGTERM, on_signal)
    return None


def restore_termination(previous: Any) -> None:
    """Put back the SIGTERM handler :func:`handle_termination` replaced."""
    if previous is not None:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, previous)


_KEPT: dict[str, str] = {}


def note_kept(what: str, path: str | os.PathLike) -> None:
    """Remember the newest complete output of a kind (e.g. "checkpoint") for the interruption message."""
    _KEPT[what] = str(path)


def kept_summary() -> str:
    """What an interrupted run leaves behind, as one phrase."""
    if not _KEPT:
        return "no checkpoint or output had been completed"
    return "kept: " + ", ".join(f"last {what} {path}" for what, path in _KEPT.items())


def interruption_line(exc: KeyboardInterrupt) -> str:
    """The one line printed when a run is stopped by a signal."""
    name = exc.args[0] if isinstance(exc, Interrupted) and exc.args else "SIGINT (Ctrl-C)"
    return (f"interrupted by {name}: the write in progress was abandoned (no partial file left); "
            f"{kept_summary()}; run the same command again to continue")


# ------------------------------------------------------------------------------------------------ disk
def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError meaning "no space left" (or "quota exceeded"), also inside lmdb's messages."""
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text


@contextlib.contextmanager
def disk_full_guard(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full-disk error raised inside the block into :class:`DiskFullError` naming ``path``."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch/lmdb wrap the OSError in their own types
        if is_disk_full(exc):
            raise DiskFullError(f"disk full: {path} could not be written (free space on its device, then run "
                                f"the command again; nothing partial was kept)", path) from exc
        raise


# ------------------------------------------------------------------------------------------------ processes
def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this machine (permission errors count as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(directory: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Delete temporary files/folders of writers that died (their pid is not alive); returns them.

    Only names of this project's writers are touched (``*.tmp-<pid>``, ``*.old-<pid>``). A live pid is
    left alone: it may be another process writing right now.
    """
    root = Path(directory)
    if not root.is_dir():
        return []
    entries = root.rglob("*") if recursive else root.iterdir()
    removed = [path for path in sorted(entries, key=lambda p: len(p.parts)) if clean_stale_temps_entry(path)]
    if removed:
        LOG.warning("removed %d leftover temporary file(s) of dead writers: %s", len(removed),
                    ", ".join(str(p) for p in removed[:5]) + (" ..." if len(removed) > 5 else ""))
    return removed


def clean_stale_temps_entry(path: Path) -> bool:
    """Remove ``path`` if it is a temporary name of a writer whose pid is dead; True if removed."""
    match = _TEMP_RE.search(path.name)
    if not match or not path.exists() or pid_alive(int(match.group(1))):
        return False
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return True


# ------------------------------------------------------------------------------------------------ lock
class RunLock:
    """An exclusive lock on an output directory: ``DIR/.run.lock`` = {"pid", "host", "since"}.

    ``acquire`` refuses a lock held by a live process (or by any process on another host, which cannot be
    checked from here: the message says how to remove it), and takes over, with a warning, the lock of a
    process of this host that is gone. ``release`` removes the file if it is still ours.
    """

    NAME = ".run.lock"

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / self.NAME
        self.mine = {"pid": os.getpid(), "host": socket.gethostname()}
        self.held = False

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock removed by us may be re-taken by a racing process: retry
            if self._create():
                self.held = True
                return self
            self._check_holder()
        raise RunLockError(f"{self.path}: could not take the run lock (another run keeps taking it)")

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({**self.mine, "since": time.strftime("%Y-%m-%d %H:%M:%S")}, fh)
        return True

    def _check_holder(self) -> None:
        """Raise if the current holder is alive (or unknowable); remove its lock if it is dead."""
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
            pid, host = int(holder["pid"]), str(holder["host"])
        except FileNotFoundError:
            return  # released meanwhile
        except (ValueError, KeyError, TypeError):
            holder, pid, host = {}, -1, self.mine["host"]  # unreadable: treat as a dead writer's
        if host != self.mine["host"]:
            raise RunLockError(f"{self.path.parent} is in use by process {pid} on host {host} (since "
                               f"{holder.get('since', '?')}); use another output_dir, or delete {self.path} "
                               f"if that run is gone")
        if pid == self.mine["pid"] or pid_alive(pid):
            raise RunLockError(f"{self.path.parent} is in use by process {pid} on this host (since "
                               f"{holder.get('since', '?')}); wait for it or use another output_dir")
        LOG.warning("%s: taking over the lock of process %d on %s, which is no longer running", self.path, pid, host)
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if not self.held:
            return
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.path.read_text(encoding="utf-8")).get("pid") == self.mine["pid"]:
                self.path.unlink()
        self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ------------------------------------------------------------------------------------------------ outputs
def usual_file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (0644 under the usual 022).

    ``tempfile.mkstemp`` creates its files 0600 whatever the umask; results renamed from such a file would
    be unreadable to the rest of a group while every other output is readable.
    """
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask



def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse, before any work, an output file path that is a directory or whose folder cannot be
    written (missing parents are created when possible)."""
    out = Path(path)
    if out.is_dir():
        raise RunError(f"{what} {out}: is a directory, expected a file path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunError(f"{what} {out}: a parent of it is a file, not a folder") from None
    except PermissionError:
        raise RunError(f"{what} {out}: cannot create its folder {out.parent} (permission denied)") from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise RunError(f"{what} {out}: folder {out.parent} is not writable")
    if out.exists() and not os.access(out, os.W_OK):
        raise RunError(f"{what} {out}: exists and is not writable")
    return out


def check_output_dir(path: str | os.PathLike, what: str = "output_dir") -> Path:
    """Refuse, before any work, an output directory that is a file or cannot be created/written."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise RunError(f"{what} {out}: is a file, expected a directory")
    probe = out
    while not probe.exists():  # the nearest existing ancestor decides whether it can be created
        probe = probe.parent
    if not probe.is_dir():
        raise RunError(f"{what} {out}: {probe} is a file, so the directory cannot be created")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunError(f"{what} {out}: {probe} is not writable")
    return out
