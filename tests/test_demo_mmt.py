"""The demo's MMT claim in CI: with the source degraded (class nouns and colour words masked at train and
test time), MMT recovers the masked words from the image and NMT cannot; shuffled images take the advantage
away. Runs the demo's own pipeline (scripts/mmt_demo.py: prepro.py multi30k, train_mmt.py, inf_mmt.py) on
a demo corpus for two en->de runs from scratch (200 steps) on 100 test sentences. Measured so (README, the
2026-12-03 run): BLEU 43.3 vs 28.1, masked words (relaxed) 53.5 % vs 21.3 %, shuffled images 24.2 (Δ +19.1);
the margins below are about half of those. About 3 minutes of CPU time on an idle machine (more on a shared one)."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from scripts import mmt_demo
    from scripts.make_demo_data import build_demo_corpus

    root = tmp_path_factory.mktemp("mmt_demo")
    build_demo_corpus(root / "data", n_train=1000, n_val=50, n_test=100, progress=False)
    ctx = mmt_demo.Ctx(root, root / "results", steps=200, pretrain_steps=0, jobs=2)
    runs = (mmt_demo.Run("de", False, "scratch", True), mmt_demo.Run("de", True, "scratch", True))
    rows = mmt_demo.run_matrix(ctx, runs)
    return rows[runs[0].name], rows[runs[1].name]


def test_degraded_source_mmt_beats_nmt(results):
    nmt, mmt = results
    assert mmt["bleu_tok"]["score"] > nmt["bleu_tok"]["score"] + 8.0
    assert mmt["masked_words"]["relaxed"] > nmt["masked_words"]["relaxed"] + 15.0


def test_shuffled_images_remove_the_advantage(results):
    nmt, mmt = results
    assert nmt["incongruent"]["delta"] == 0.0  # NMT never reads the image
    assert mmt["incongruent"]["delta"] > 5.0
    assert mmt["incongruent"]["shuffled_mean"] < nmt["bleu_tok"]["score"] + 4.0
