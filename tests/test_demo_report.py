"""scripts/demo_report.py puts the fast-retrieval stage's table (shortlist.json) into the demo report."""
from __future__ import annotations

import json

from scripts import demo_report


def shortlist_row(lang: str, rerank: float, scored: int) -> dict:
    return {"name": f"demo_{lang}_test", "dataset": "demo", "lang": lang, "dual_ar": 60.0, "rerank_ar": rerank,
            "exhaustive_ar": 62.0, "pairs_scored": scored, "pairs_total": 10_000, "k_img": 2, "k_txt": 8,
            "below_shortlist": "dual_encoder", "txt_recall_at_k": 55.0, "img_recall_at_k": 80.0,
            "seconds_total": 0.1, "seconds_exhaustive": 1.3}


def test_report_carries_the_shortlist_table(tmp_path):
    demo_dir, out = tmp_path / "demo", tmp_path / "out"
    table = demo_dir / demo_report.SHORTLIST_TABLE
    table.parent.mkdir(parents=True)
    table.write_text(json.dumps([shortlist_row("en", 61.5, 500), shortlist_row("de", 63.0, 300)]))
    text = demo_report.main(["--demo_dir", str(demo_dir), "--out", str(out)])
    section = text.split("## Fast retrieval")[1]
    assert "| demo_en_test | en | 62.0 | 60.0 | 61.5 |" in section and "| 2 / 8 |" in section
    assert "800 of 20,000 | 25.0x" in section                     # the mean row: pairs over both sets
    assert "in the dual encoder's order" in section
    assert json.loads((out / "report.json").read_text())["shortlist"][1]["lang"] == "de"


def test_report_without_the_fast_retrieval_stage_has_no_such_section(tmp_path):
    (tmp_path / "demo").mkdir()
    text = demo_report.main(["--demo_dir", str(tmp_path / "demo"), "--out", str(tmp_path / "out")])
    assert "Fast retrieval" not in text
