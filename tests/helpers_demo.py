"""A small demo corpus with a random XLM-R-style stand-in and its UC2 checkpoint, for end-to-end tests."""
from __future__ import annotations

from pathlib import Path


def build_small_demo(root: Path, n_train: int = 400, n_val: int = 20, n_test: int = 50) -> Path:
    """Build ``root/data`` (demo corpus), ``root/xlmr`` (random stand-in, init range 0.1) and
    ``root/nopt`` (``model_final.pt`` + ``model.json``: the stand-in as a UC2 checkpoint); returns ``root``."""
    from scripts import make_tiny_xlmr, xlmr_to_uc2
    from scripts.make_demo_data import build_demo_corpus

    build_demo_corpus(root / "data", n_train=n_train, n_val=n_val, n_test=n_test, progress=False)
    make_tiny_xlmr.main(["--tokenizer", str(root / "data" / "tokenizer"),
                         "--text", str(root / "data" / "raw" / "captions_train.jsonl"),
                         "--out", str(root / "xlmr"), "--steps", "0"])
    xlmr_to_uc2.main(["--xlmr", str(root / "xlmr"), "--img_db", str(root / "data" / "img_db" / "demo_imgs"),
                      "--min_bb", "3", "--out", str(root / "nopt")])
    return root
