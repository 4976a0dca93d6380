"""Fast retrieval on the demo (issue 14's claims): an ITC shortlist head fitted onto the all-language
fine-tune (its cross-encoder untouched), then shortlist + rerank on the six test sets against exhaustive
scoring, at the default k (ShortlistOptions: 4 % of the gallery, here 2 of 50 images and 8 of 200 captions).
Runs the demo's own stages (those of tests/test_demo_retrieval.py up to the all-language fine-tune, then the
shortlist stage: about one minute more; stages shared with that test run once per session, see
conftest.demo_stages). Measured 2026-12-04 at the default k: reranked AR 70.7 / 63.8 / 70.0 / 66.4 / 71.0 /
73.4 against exhaustive 71.0 / 59.3 / 66.1 / 60.3 / 58.5 / 58.0 (en de fr cs ja zh), 17.7x fewer pairs.
The demo's dual encoder is stronger than its tiny cross-encoder, so the rerank mostly gains; with
``below_shortlist: tied`` the same run loses up to 10.6 AR (en) at this k (scripts/shortlist_sweep.py)."""
from __future__ import annotations

import json

import pytest


STAGES = ("build demo corpus", "text-only XLM-R stand-in", "early adaptation", "pretraining warm-up (English ITM)",
          "pretraining (MLM + ITM + MRTM + VTLM)", "retrieval fine-tuning, all_lang",
          "fast retrieval: ITC shortlist head on the all-language fine-tune")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rows(demo_stages):
    paths = demo_stages(STAGES)
    return json.loads((paths.demo_dir / "itm_all_lang_itc" / "results" / "shortlist.json").read_text())


def test_rerank_loses_at_most_one_ar_point_in_every_language(rows):
    assert [r["lang"] for r in rows] == ["en", "de", "fr", "cs", "ja", "zh"]
    assert {(r["k_img"], r["k_txt"]) for r in rows} == {(2, 8)}          # the default k on 50 images x 200 captions
    for r in rows:
        assert r["rerank_ar"] >= r["exhaustive_ar"] - 1.0, r


def test_rerank_scores_at_least_ten_times_fewer_pairs(rows):
    for r in rows:
        assert r["pairs_total"] >= 10 * r["pairs_scored"], r
