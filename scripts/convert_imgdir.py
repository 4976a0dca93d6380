#!/usr/bin/env python
"""Convert a folder of per-image ``.npz`` region features into an img_db (as UNITER's convert_imgdir).

    python scripts/convert_imgdir.py --img_dir DIR_OF_NPZ --output OUT_DIR \
        [--conf_th 0.2 --max_bb 100 --min_bb 10 --num_bb 36 --keep_all --compress --nproc N]

Each ``.npz`` holds float32 ``features`` (n, D), ``norm_bb`` (n, 6), ``conf`` (n, 1), ``soft_labels``
(n, C), boxes most confident first. The first ``min(max_bb, max(min_bb, count(conf > conf_th)))`` boxes
are kept (``--conf_th -1``: the first ``num_bb``; ``--keep_all``: all), float arrays are stored as float16
in ``OUT_DIR/feat_th{conf_th}_max{max_bb}_min{min_bb}`` (``feat_numbb{num_bb}``, ``all``; ``_compressed``
with ``--compress``), and the box counts in ``OUT_DIR/nbb_th{conf_th}_max{max_bb}_min{min_bb}.json``.

Differences from UNITER, on purpose: OUT_DIR is the image-set folder itself (UNITER appended the input
folder's name); files are read in name order (deterministic ``__keys__``); pickled arrays are refused;
the nbb json records the boxes actually kept (UNITER wrote min_bb even for images with fewer boxes);
``--conf_th -1`` keeps ``num_bb`` boxes (UNITER ignored num_bb there).
"""
from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utils.errors import DataError
from data.img_db import ImgDbWriter, compute_num_bb


def _boxes_to_keep(dump: dict, n: int, conf_th: float, max_bb: int, min_bb: int, num_bb: int,
                   keep_all: bool) -> int:
    if keep_all:
        return n
    if conf_th == -1:
        return min(num_bb, n)
    # The rule can ask for more boxes (min_bb) than an image has: record what is really kept.
    return min(n, compute_num_bb(dump["conf"], conf_th, max_bb, min_bb))


def _check_npz(dump: dict, needs_conf: bool) -> str | None:
    """Why this feature file cannot be used, or None."""
    for key in ("features", "norm_bb") + (("conf",) if needs_conf else ()):
        if key not in dump:
            return f"no '{key}' array"
    n = dump["features"].shape[0] if dump["features"].ndim == 2 else -1
    if n < 0:
        return f"'features' has shape {dump['features'].shape}, expected (n, D)"
    if dump["norm_bb"].shape != (n, 6):
        return f"'norm_bb' has shape {dump['norm_bb'].shape}, expected ({n}, 6)"
    bad = [k for k, a in dump.items() if a.ndim > 2 or (a.ndim == 2 and a.shape[0] != n)]
    if bad:
        return f"array '{bad[0]}' has shape {dump[bad[0]].shape}, expected ({n}, ...) or 1-d"
    return None


def load_npz(path: Path, conf_th: float, max_bb: int, min_bb: int, num_bb: int,
             keep_all: bool) -> tuple[str, dict | None, int, str | None]:
    """Read one feature file; return (name, arrays cut to the kept boxes, boxes kept, drop reason).

    2-d arrays are cut to their first rows; 0-d/1-d arrays (e.g. image size) are kept whole.
    """
    try:
        # allow_pickle=False: a feature file is data; a pickled array is dropped, never executed.
        with np.load(path, allow_pickle=False) as npz:
            dump = {k: npz[k] for k in npz.files}
    except Exception as exc:  # zip/format/pickle errors all mean "this file is unusable"
        return path.name, None, 0, f"unreadable npz ({type(exc).__name__}: {exc})"
    reason = _check_npz(dump, needs_conf=not keep_all and conf_th != -1)
    if reason is not None:
        return path.name, None, 0, reason
    nbb = _boxes_to_keep(dump, dump["features"].shape[0], conf_th, max_bb, min_bb, num_bb, keep_all)
    return path.name, {k: (a[:nbb] if a.ndim == 2 else a) for k, a in dump.items()}, nbb, None


def _iter_loaded(files: list[Path], load, nproc: int):
    """Loaded files in input order, in a process pool when nproc > 1."""
    if nproc <= 1:
        yield from map(load, files)
        return
    with multiprocessing.get_context().Pool(nproc) as pool:
        # imap (ordered), not imap_unordered as UNITER: the same input always gives the same db.
        yield from pool.imap(load, files, chunksize=max(1, min(64, len(files) // (4 * nproc))))


def convert_imgdir(img_dir: str | os.PathLike, output: str | os.PathLike, conf_th: float = 0.2,
                   max_bb: int = 100, min_bb: int = 10, num_bb: int = 36, keep_all: bool = False,
                   compress: bool = False, nproc: int = 1, overwrite: bool = False,
                   progress: bool = True) -> dict:
    """Convert every ``img_dir/*.npz`` into an img_db under ``output``; return a summary.

    Summary keys: ``db_dir``, ``nbb_json`` (None for ``keep_all`` / ``conf_th == -1``), ``images``,
    ``boxes`` (kept, in total), ``dropped`` ({file name: reason}). Unusable files are dropped and
    reported; no usable file at all is a DataError (and nothing is written).
    """
    src = Path(img_dir)
    if not src.is_dir():
        raise DataError(f"{src}: feature directory not found")
    files = sorted(src.glob("*.npz"))
    if not files:
        raise DataError(f"{src}: no .npz feature files inside")
    Path(output).mkdir(parents=True, exist_ok=True)
    load = functools.partial(load_npz, conf_th=conf_th, max_bb=max_bb, min_bb=min_bb, num_bb=num_bb,
                             keep_all=keep_all)
    dropped: dict[str, str] = {}
    boxes = 0
    with ImgDbWriter(output, conf_th, max_bb, min_bb, num_bb, keep_all=keep_all, compress=compress,
                     overwrite=overwrite) as writer:
        for name, arrays, nbb, reason in tqdm(_iter_loaded(files, load, nproc), total=len(files),
                                              desc=f"converting {src.name}", disable=not progress):
            if arrays is None:
                dropped[name] = reason
                continue
            writer.add(name, arrays, nbb)
            boxes += nbb
        if not writer.name2nbb:
            raise DataError(f"{src}: none of the {len(files)} .npz files is usable, e.g. "
                            f"{next(iter(dropped.items()))}")
    return {"db_dir": str(writer.db_dir), "nbb_json": writer.nbb_path and str(writer.nbb_path),
            "images": len(writer.name2nbb), "boxes": boxes, "dropped": dropped}


def summary_line(summary: dict) -> str:
    """One human-readable line: images, boxes kept, dropped files and why."""
    line = (f"converted {summary['images']} images, {summary['boxes']} boxes kept -> {summary['db_dir']}; "
            f"dropped {len(summary['dropped'])} file(s)")
    if summary["dropped"]:
        line += ": " + "; ".join(f"{name}: {why}" for name, why in summary["dropped"].items())
    return line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--img_dir", required=True, help="folder of per-image .npz feature files")
    parser.add_argument("--output", required=True, help="image-set folder to write the img_db into")
    parser.add_argument("--conf_th", type=float, default=0.2, help="confidence threshold; -1: fixed count")
    parser.add_argument("--max_bb", type=int, default=100, help="at most this many boxes")
    parser.add_argument("--min_bb", type=int, default=10, help="at least this many boxes")
    parser.add_argument("--num_bb", type=int, default=36, help="boxes kept when --conf_th is -1")
    parser.add_argument("--keep_all", action="store_true", help="keep every box (sub-LMDB 'all')")
    parser.add_argument("--compress", action="store_true", help="store np.savez_compressed records")
    parser.add_argument("--nproc", type=int, default=1, help="worker processes reading .npz files")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing sub-LMDB")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = convert_imgdir(args.img_dir, args.output, args.conf_th, args.max_bb, args.min_bb,
                                 args.num_bb, args.keep_all, args.compress, args.nproc, args.overwrite)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary_line(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
