"""Rank-0 run logging: console + ``OUT/log.txt``, TensorBoard scalars in ``OUT/tb/``, a tqdm progress bar.

On other ranks every method is a no-op, so callers never test the rank themselves. While open, the logger
also copies warnings of the library's ``logging`` loggers (e.g. the config adapter's ignored keys) into
``log.txt``; ``close()`` (or leaving the ``with`` block) removes that hook again.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from tqdm import tqdm


class _NoBar:
    """Stand-in for tqdm on ranks that show no progress."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class RunLogger:
    """Logs of one run; ``enabled=False`` (non-main ranks) makes every call a no-op."""

    def __init__(self, output_dir: str | Path | None, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self._file = None
        self._tb = None
        self._handler: logging.Handler | None = None
        self._bar: Any = _NoBar()
        if not enabled or output_dir is None:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._file = open(out / "log.txt", "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if tensorboard:
            from tensorboardX import SummaryWriter  # imported here: only rank 0 of a real run needs it
            self._tb = SummaryWriter(str(out / "tb"))
        self._handler = _FileCopyHandler(self)
        logging.getLogger().addHandler(self._handler)

    def info(self, msg: str) -> None:
        """A timestamped line on the console (above the progress bar) and in log.txt."""
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        tqdm.write(line, file=sys.stderr)
        self._write_file(line)

    def _write_file(self, line: str) -> None:
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """TensorBoard scalars (names like ``loss/mlm_coco``) at ``step``."""
        if self._tb is None:
            return
        for name, value in values.items():
            self._tb.add_scalar(name, float(value), step)
        self._tb.flush()

    def progress(self, total: int, initial: int = 0, desc: str = "train") -> Any:
        """Start a progress bar (rank 0 only); returns it (``update``, ``set_postfix``)."""
        if self.enabled:
            self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr)
        return self._bar

    def close(self) -> None:
        """Flush and release the file, the TensorBoard writer, the bar and the logging hook."""
        self._bar.close()
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _FileCopyHandler(logging.Handler):
    """Copies library log records (WARNING and above) into the run's log.txt."""

    def __init__(self, run_logger: RunLogger) -> None:
        super().__init__(level=logging.WARNING)
        self._run_logger = run_logger

    def emit(self, record: logging.LogRecord) -> None:
        self._run_logger._write_file(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {record.levelname} "
                                     f"{record.name}: {record.getMessage()}")
