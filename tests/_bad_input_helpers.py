"""Helpers of ``tests/test_bad_inputs.py``: a tiny valid UC2 setup, config writers, file breakers and the
"nothing half-written" checks.

The setup mirrors what ``scripts/run_demo.py`` lays out under ``${UC2_DEMO_DIR}``: ``data/`` (the demo
corpus: tokenizer, txt_dbs, img_db, raw inputs) and ``xlmr/`` (a 1-layer, 32-wide XLM-R stand-in), so the
shipped demo configs resolve against it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

# Substrings of the temporary names our writers use while building (``<dir>.tmp-<pid>``, ``.name.tmp-<pid>``,
# ``<dir>.old-<pid>``, ``NAME.tmp``); none of them may survive a failure.
TEMP_MARKERS = (".tmp", ".old-")


def build_setup(root: Path) -> Path:
    """Demo corpus in ``root/data`` and a tiny XLM-R folder in ``root/xlmr``; returns ``root``."""
    from scripts import make_tiny_xlmr
    from scripts.make_demo_data import build_demo_corpus

    build_demo_corpus(root / "data", n_train=12, n_val=4, n_test=4, progress=False)
    make_tiny_xlmr.main(["--tokenizer", str(root / "data" / "tokenizer"), "--text",
                         str(root / "data" / "raw" / "captions_train.jsonl"), "--out", str(root / "xlmr"),
                         "--steps", "0", "--hidden", "32", "--layers", "1", "--heads", "2", "--ffn", "64"])
    return root


def pretrain_config(repo_root: Path, output_dir: Path) -> dict[str, Any]:
    """``config/demo_pretrain.json`` cut to two sources (captions en: MLM/ITM/MRTM; paired en-de: VTLM),
    two steps of small batches, no validation, no Early Adaptation file; paths keep their ``${UC2_DEMO_DIR}``."""
    cfg = json.loads((repo_root / "config" / "demo_pretrain.json").read_text(encoding="utf-8"))
    cfg.pop("early_adaptation")
    cfg["train_datasets"] = [ds for ds in cfg["train_datasets"] if ds["name"] in ("cap_en", "paired_en-de")]
    cfg["val_datasets"] = []
    cfg.update(output_dir=str(output_dir), num_train_steps=2, warmup_steps=0, valid_steps=0, save_steps=0,
               log_steps=1, pin_mem=False, train_batch_size=256)
    return cfg


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def copy_db(src: Path, dst: Path) -> Path:
    """Copy a (closed, read-only) LMDB database folder with its side files."""
    shutil.copytree(src, dst)
    return dst


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its size, as an interrupted copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def leftovers(root: Path) -> list[str]:
    """Temporary build files/folders anywhere under ``root`` (each one means half-written output)."""
    if not root.exists():
        return []
    return sorted(str(p) for p in root.rglob("*") if any(m in p.name for m in TEMP_MARKERS))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file under ``root``: compare to prove nothing changed."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def expect_error(call: Callable[[], Any], exc_type: type | tuple[type, ...], *fragments: str) -> str:
    """Run ``call``; it must raise ``exc_type`` whose message holds every fragment. Returns the message."""
    with pytest.raises(exc_type) as info:
        call()
    message = str(info.value)
    missing = [f for f in fragments if f not in message]
    assert not missing, f"error message lacks {missing}: {message}"
    return message
