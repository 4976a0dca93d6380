"""Word alignments (Pharaoh format) for a paired-captions JSONL, for ``prepro.py paired``.

    python scripts/align_words.py --input cc_en_de.jsonl --output cc_en_de.align [--aligner fast_align]

Uses an installed statistical aligner: ``fast_align`` on PATH (build github.com/clab/fast_align, or
``pip install systran-align``, which bundles it) run forward and reverse and symmetrised here with
grow-diag-final-and; or ``eflomal-align`` (``pip install eflomal``; GPL, hence optional), which also gives
forward and reverse links. Without an aligner it exits with status 3 and says how to install one.

The output has one line per non-blank JSON line, in order ("0-1 2-3": word i of caption1 - word j of
caption2, words = whitespace split, as prepro.py reads them); a pair with an empty side gets an empty line.
Words are lower-cased for the aligner unless ``--keep_case``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from utils.atomic import atomic_write_text
from utils.errors import DataError
from data.prepro import PAIRED_FIELDS, iter_jsonl, parse_pharaoh

ALIGNERS = ("fast_align", "eflomal-align")
INSTALL_HINT = ("no word aligner found on PATH. Install one of:\n"
                "  fast_align: pip install systran-align  (or build https://github.com/clab/fast_align and put "
                "the fast_align binary on PATH)\n"
                "  eflomal:    pip install eflomal  (GPL-licensed; provides eflomal-align)\n"
                "or pass --aligner_bin /path/to/fast_align.")
Pairs = set[tuple[int, int]]


def build_aligner_input(jsonl: str | os.PathLike, lowercase: bool = True) -> tuple[list[str], list[int]]:
    """``"src ||| tgt"`` lines for the aligner and, for each, its index among the JSON lines.

    Pairs with an empty side are left out (aligners reject them); their index is simply missing.
    """
    path = Path(jsonl)
    lines, index = [], []
    for k, (lineno, row) in enumerate(iter_jsonl(path, PAIRED_FIELDS)):
        sides = []
        for key in ("caption1", "caption2"):
            if not isinstance(row[key], str):
                raise DataError(f"{path}, line {lineno}: field {key!r} must be a string")
            text = " ".join(row[key].split())
            sides.append(text.lower() if lowercase else text)
        if "|||" in sides[0] or "|||" in sides[1]:
            raise DataError(f"{path}, line {lineno}: captions may not contain '|||' (the aligner's separator)")
        if sides[0] and sides[1]:
            lines.append(f"{sides[0]} ||| {sides[1]}")
            index.append(k)
    return lines, index


def parse_alignments(lines: Sequence[str], expected: int, source: str) -> list[Pairs]:
    """Parse an aligner's Pharaoh output; DataError if it does not have ``expected`` lines."""
    if len(lines) != expected:
        raise DataError(f"{source}: aligner wrote {len(lines)} lines, expected {expected}")
    return [set(parse_pharaoh(line, f"{source}, line {n}")) for n, line in enumerate(lines, start=1)]


_NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


def grow_diag_final_and(forward: Pairs, reverse: Pairs) -> Pairs:
    """Symmetrise two directional alignments (Koehn et al.'s grow-diag-final-and).

    Start from the intersection; repeatedly add union points next to (incl. diagonally) an alignment point
    whose source or target word is still unaligned; finally add directional points whose words are both
    unaligned.
    """
    union, links = forward | reverse, forward & reverse
    src_done, tgt_done = {i for i, _ in links}, {j for _, j in links}
    grew = True
    while grew:
        grew = False
        for i, j in sorted(links):
            for di, dj in _NEIGHBOURS:
                cand = (i + di, j + dj)
                if cand in union and cand not in links and (cand[0] not in src_done or cand[1] not in tgt_done):
                    links.add(cand)
                    src_done.add(cand[0])
                    tgt_done.add(cand[1])
                    grew = True
    for i, j in sorted(forward) + sorted(reverse):
        if i not in src_done and j not in tgt_done:
            links.add((i, j))
            src_done.add(i)
            tgt_done.add(j)
    return links


def format_pharaoh(pairs: Iterable[tuple[int, int]]) -> str:
    return " ".join(f"{i}-{j}" for i, j in sorted(pairs))


def find_aligner(preferred: str | None = None) -> tuple[str, str] | None:
    """``(name, executable path)`` of the aligner to use, or None when none is installed."""
    for name in ((preferred,) if preferred else ALIGNERS):
        found = shutil.which(name)
        if found:
            return name, found
    return None


def _run(cmd: list[str], stdout_path: Path | None = None) -> None:
    with open(stdout_path, "w", encoding="utf-8") if stdout_path else open(os.devnull, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise DataError(f"aligner command {' '.join(cmd)} failed with status {proc.returncode}: "
                        f"{proc.stderr.strip()[-500:]}")


def run_aligner(name: str, binary: str, input_lines: Sequence[str], workdir: Path) -> tuple[list[str], list[str]]:
    """Run the aligner forward and reverse on ``input_lines``; returns both outputs' lines."""
    src = workdir / "input.txt"
    src.write_text("".join(line + "\n" for line in input_lines), encoding="utf-8")
    fwd, rev = workdir / "forward.align", workdir / "reverse.align"
    if name == "eflomal-align":
        _run([binary, "-i", str(src), "-f", str(fwd), "-r", str(rev), "--model", "3"])
    else:  # fast_align: -d favour the diagonal, -o optimise tension, -v Dirichlet prior (its README's defaults)
        _run([binary, "-i", str(src), "-d", "-o", "-v"], fwd)
        _run([binary, "-i", str(src), "-d", "-o", "-v", "-r"], rev)
    read = lambda p: p.read_text(encoding="utf-8").splitlines()  # noqa: E731
    return read(fwd), read(rev)


def align_file(jsonl: Path, output: Path, name: str, binary: str, lowercase: bool = True) -> int:
    """Align every pair of ``jsonl`` and write ``output`` atomically; returns the number of lines written."""
    lines, index = build_aligner_input(jsonl, lowercase)
    n_rows = sum(1 for _ in iter_jsonl(jsonl, PAIRED_FIELDS))
    result = [""] * n_rows
    if lines:
        with tempfile.TemporaryDirectory(prefix="align_words-") as tmp:
            fwd_lines, rev_lines = run_aligner(name, binary, lines, Path(tmp))
        forward = parse_alignments(fwd_lines, len(lines), f"{name} forward output")
        reverse = parse_alignments(rev_lines, len(lines), f"{name} reverse output")
        for k, fwd, rev in zip(index, forward, reverse):
            result[k] = format_pharaoh(grow_diag_final_and(fwd, rev))
    atomic_write_text(output, "".join(line + "\n" for line in result))
    return n_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, type=Path, help="paired JSONL (prepro.py paired format)")
    parser.add_argument("--output", required=True, type=Path, help="Pharaoh alignment file to write")
    parser.add_argument("--aligner", choices=ALIGNERS, help="which aligner (default: the first one installed)")
    parser.add_argument("--aligner_bin", type=Path, help="explicit path of the aligner executable")
    parser.add_argument("--keep_case", action="store_true", help="do not lower-case words for the aligner")
    args = parser.parse_args(argv)
    if args.aligner_bin is not None:
        found = (args.aligner or "fast_align", str(args.aligner_bin))
    else:
        found = find_aligner(args.aligner)
    if found is None:
        print(f"align_words.py: {INSTALL_HINT}", file=sys.stderr)
        return 3
    try:
        n = align_file(args.input, args.output, *found, lowercase=not args.keep_case)
    except DataError as err:
        print(f"align_words.py: error: {err}", file=sys.stderr)
        return 2
    print(f"align_words.py: wrote {n} alignment lines to {args.output} with {found[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
