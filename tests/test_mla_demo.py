"""The demo's MLA section end to end (slow: ~9 min wall on 2 shared cores, ~95 s of CPU time).

Measured on the quick profile (demo corpus 1000/50/50 images, 2026-12-03): NLT -> LE reached AR 76.1-88.5 on
de/fr/cs/ja/zh against 10.3 for random scores, i.e. 7.4x chance for the weakest language. The test asks for
4x (about half of that) on every language, and English unchanged bit for bit.
"""
from __future__ import annotations

import json

import pytest

SAFE_FACTOR = 4.0


@pytest.mark.slow
def test_demo_mla_far_above_chance_with_english_unchanged(tmp_path, monkeypatch):
    import torch

    from scripts import make_tiny_xlmr, mla_demo
    from scripts.make_demo_data import build_demo_corpus

    before = torch.get_num_threads()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    build_demo_corpus(tmp_path / "data", n_val=50, n_test=50, progress=False)
    make_tiny_xlmr.main(["--tokenizer", str(tmp_path / "data" / "tokenizer"), "--text",
                         str(tmp_path / "data" / "raw" / "captions_train.jsonl"), "--out", str(tmp_path / "xlmr"),
                         "--steps", "0"])
    try:
        mla_demo.main(["--demo_dir", str(tmp_path), "--results", str(tmp_path / "results")])
    finally:
        torch.set_num_threads(before)
    report = json.loads((tmp_path / "results" / "mla_report.json").read_text(encoding="utf-8"))
    ar = {(r["setting"], r["lang"]): r["metrics"]["r_mean"] for r in report["retrieval"]}
    chance = ar[("random scores (chance)", "de")]
    for lang in mla_demo.LANGS:
        assert ar[("MLA: NLT -> LE", lang)] > SAFE_FACTOR * chance, (lang, ar[("MLA: NLT -> LE", lang)], chance)
    checks = report["checks"]
    assert all(v["bitwise_equal"] for v in checks["english_scores_equal_native"].values())
    assert all(checks["native_weights_unchanged"].values())
    assert all(v["bitwise_equal"] for v in checks["after_adding_zh_embedding_frozen"].values())
    assert not all(v["bitwise_equal"] for v in checks["after_adding_zh_embedding_trained"].values())
