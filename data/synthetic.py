"""Synthetic caption and image databases for scale measurements (scripts/bench_scale.py).

They have the reader surface the datasets use (``meta``, ``[id]``, ``get(fname)``, ``name2nbb``) and build
their example tables with numpy (``example_tables()``), so that a 20 M-caption dataset exists in seconds
without feature files or JSON side files. A module of the package (not of scripts/) so that data-loader
workers can unpickle them.
"""
from __future__ import annotations

import numpy as np

from data.shared_table import SharedArray, StringTable

FEAT_DIM = 2048


def fixed_width_ids(prefix: str, n: int, digits: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 buffer and (n + 1,) offsets of ``f"{prefix}{i:0{digits}d}"`` for i < n, built with numpy."""
    width = len(prefix) + digits
    rows = np.empty((n, width), dtype=np.uint8)
    rows[:, :len(prefix)] = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    value = np.arange(n, dtype=np.int64)
    for col in range(width - 1, len(prefix) - 1, -1):
        rows[:, col] = ord("0") + value % 10
        value //= 10
    return rows.reshape(-1), np.arange(0, (n + 1) * width, width, dtype=np.int64)


class SyntheticCaptions:
    """One language's caption db: caption i describes image i; records drawn from the caption id."""

    def __init__(self, lang: str, n: int, seed: int = 0):
        self.lang, self.n, self.seed = lang, n, seed
        self.db_dir = f"synthetic-captions-{lang}"
        self.meta = {"CLS": 0, "SEP": 2, "MASK": 250001, "v_range": [5, 250000], "lang": lang}

    def example_tables(self):
        """(caption ids, sorted image names, image index of each caption, text lengths)."""
        ids = StringTable.from_buffer(*fixed_width_ids(f"cc_{self.lang}_", self.n))
        images = StringTable.from_buffer(*fixed_width_ids("img_", self.n), sorted_=True)
        lens = np.random.default_rng([self.seed, 1]).integers(5, 61, size=self.n)
        return ids, images, SharedArray(np.arange(self.n, dtype=np.int32)), lens

    def __getitem__(self, txt_id: str) -> dict:
        index = int(txt_id.rsplit("_", 1)[1])
        rng = np.random.default_rng([self.seed, index])
        return {"input_ids": rng.integers(5, 250000, size=int(rng.integers(5, 61))).tolist(),
                "img_fname": f"img_{index:09d}"}


class SyntheticImages:
    """The image set: 10..100 regions of FEAT_DIM features per image, drawn from the image name.

    ``name2nbb`` is a real dict, as ImgDb's (built from names generated with numpy).
    """

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed = n, seed
        self.db_dir = "synthetic-images"
        names = StringTable.from_buffer(*fixed_width_ids("img_", n)).tolist()
        counts = 10 + (np.arange(n, dtype=np.int64) * 2654435761 + seed) % 91
        self.name2nbb = dict(zip(names, counts.tolist()))

    def __getstate__(self) -> dict:
        return {"n": self.n, "seed": self.seed, "db_dir": self.db_dir}  # workers compute counts from the name

    def _count(self, fname: str) -> int:
        return 10 + (int(fname[4:]) * 2654435761 + self.seed) % 91

    def get(self, fname: str) -> dict[str, np.ndarray]:
        nbb = self._count(fname)
        rng = np.random.default_rng([self.seed, int(fname[4:]), 2])
        corners = np.sort(rng.random((nbb, 4)), axis=1)
        norm_bb = np.concatenate([corners, corners[:, 2:3] - corners[:, 0:1], corners[:, 3:4] - corners[:, 1:2]], 1)
        return {"features": rng.random((nbb, FEAT_DIM), dtype=np.float32), "norm_bb": norm_bb.astype(np.float32)}
