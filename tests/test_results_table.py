"""Result tables: exact Markdown for small cases, missing cells, paper rows, JSON, atomic writing."""
import json

import pytest

from evaluation import results_table as rt
from evaluation.results_table import (Result, demo_markdown, detail_markdown, table1_markdown, table1_rows,
                                 tables_json, vqa_markdown, write_tables)

EN_ONLY = "English-only fine-tune"
ALL = "All-language fine-tune"


def _recalls(ar):
    return {"img_r1": 60.0, "img_r5": 85.0, "img_r10": 90.0, "txt_r1": 50.0, "txt_r5": 80.0,
            "txt_r10": 88.0, "r_mean": ar}


def test_table1_exact_markdown_with_missing_cells():
    results = [
        (EN_ONLY, "Multi30K", "en", _recalls(87.25)),     # half rounds up -> 87.3
        Result(EN_ONLY, "coco", "ja", _recalls(71.0)),   # alias "coco" -> MSCOCO column
        {"setting": ALL, "dataset": "m30k", "lang": "de", "metrics": {"mean": _recalls(80.0)}},  # fold result
    ]
    # Meta-Ave over present cells: (87.25 + 71.0) / 2 = 79.125 -> 79.1, marked * as incomplete
    expected = (
        "| Setting | Multi30K en | Multi30K de | Multi30K fr | Multi30K cs | MSCOCO en | MSCOCO zh | MSCOCO ja"
        " | Meta-Ave |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        "| English-only fine-tune | 87.3 | - | - | - | - | - | 71.0 | 79.1* |\n"
        "| All-language fine-tune | - | 80.0 | - | - | - | - | - | 80.0* |\n"
        "\n\\* Meta-Ave over the cells present only.\n"
    )
    assert table1_markdown(results) == expected


def test_table1_complete_row_has_unmarked_meta_ave_and_paper_rows():
    values = [88.0, 84.0, 83.0, 81.0, 88.0, 90.0, 87.0]      # sum 601 -> Meta-Ave 85.857 -> 85.9
    results = [(ALL, d, lang, {"r_mean": v}) for (d, lang), v in zip(rt.TABLE1_COLUMNS, values)]
    md = table1_markdown(results, include_paper=True).splitlines()
    assert md[2] == "| All-language fine-tune | 88.0 | 84.0 | 83.0 | 81.0 | 88.0 | 90.0 | 87.0 | 85.9 |"
    assert md[3] == "| UC2 paper: English-only fine-tune | 87.2 | 74.9 | 74.0 | 67.9 | 88.1 | 82.0 | 71.7 | 78.0 |"
    assert md[4] == "| UC2 paper: All-language fine-tune | 88.2 | 84.5 | 83.9 | 81.2 | 88.1 | 89.8 | 87.5 | 86.2 |"
    assert len(md) == 5                                     # no footnote: every row is complete


def test_paper_meta_ave_matches_its_cells():
    for row in table1_rows([], include_paper=True):
        computed = sum(row["cells"].values()) / 7
        assert round(computed, 1) == row["mean"]


def test_detail_table_orders_cells_like_the_paper():
    results = [(EN_ONLY, "mscoco", "en", _recalls(75.5)), (EN_ONLY, "multi30k", "fr", {"r_mean": 70.0})]
    expected = (
        "| Setting | Dataset | Lang | I→T R@1 | I→T R@5 | I→T R@10 | T→I R@1 | T→I R@5 | T→I R@10 | AR |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
        "| English-only fine-tune | Multi30K | fr | - | - | - | - | - | - | 70.0 |\n"
        "| English-only fine-tune | MSCOCO | en | 60.0 | 85.0 | 90.0 | 50.0 | 80.0 | 88.0 | 75.5 |\n"
    )
    assert detail_markdown(results) == expected


def test_demo_table_one_dataset_six_languages_and_mean():
    results = [("demo", "demo_coco", lang, {"r_mean": v})
               for lang, v in zip(("en", "de", "fr", "cs", "ja", "zh"), (60, 50, 40, 30, 20, 10))]
    results.append(("demo|x", "demo_coco", "en", {"r_mean": 1.0}))   # "|" in a name must not split a cell
    expected = (
        "| Setting | en | de | fr | cs | ja | zh | Mean |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| demo | 60.0 | 50.0 | 40.0 | 30.0 | 20.0 | 10.0 | 35.0 |\n"
        "| demo\\|x | 1.0 | - | - | - | - | - | 1.0* |\n"
        "\n\\* Mean over the cells present only.\n"
    )
    assert demo_markdown(results) == expected
    with pytest.raises(ValueError, match="pass dataset= to pick one"):
        demo_markdown(results + [("demo", "mscoco", "en", {"r_mean": 1.0})])


def test_vqa_table_with_paper_rows():
    results = [("ft", "VQA v2", "en", {"vqa_score": 70.126, "majority_vqa_score": 24.0}),
               ("ft", "vg-vqa", "ja", {"accuracy": 33.0, "bleu": 25.5, "majority_accuracy": 5.0})]
    expected = (
        "| Setting | Dataset | Lang | VQA score | Accuracy | BLEU | Majority VQA score | Majority accuracy |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| ft | VQA v2 | en | 70.13 | - | - | 24.00 | - |\n"
        "| ft | VG-VQA | ja | - | 33.00 | 25.50 | - | 5.00 |\n"
        "| UC2 paper (test-dev) | VQA v2 | en | 71.48 | - | - | - | - |\n"
        "| UC2 paper | VG-VQA | ja | - | 34.20 | 26.80 | - | - |\n"
    )
    assert vqa_markdown(results, include_paper=True) == expected


def test_json_has_unrounded_values_and_nulls():
    out = tables_json([(EN_ONLY, "multi30k", "en", _recalls(87.25))], include_paper=False,
                      demo_dataset="multi30k")
    out = json.loads(json.dumps(out))                          # must be JSON-serialisable
    row = out["table1"]["rows"][0]
    assert row["cells"]["multi30k/en"] == 87.25 and row["cells"]["mscoco/zh"] is None
    assert row["mean"] == 87.25 and row["complete"] is False
    assert out["detail"][0]["txt_r10"] == 88.0 and out["vqa"] == []
    assert out["demo"]["rows"][0]["cells"]["multi30k/de"] is None


@pytest.mark.parametrize("results, message", [
    ([(EN_ONLY, "multi30k", "en", {"r_mean": 1.0}), (EN_ONLY, "Multi30K", "EN", {"r_mean": 2.0})],
     r"results\[1\]: duplicate result"),
    ([(EN_ONLY, "multi30k", "en", {"r_mean": "high"})], "metric 'r_mean' must be a number"),
    ([{"setting": EN_ONLY, "dataset": "multi30k"}], "missing key 'lang'"),
    ([(EN_ONLY, "multi30k")], r"results\[0\]: expected \(setting, dataset, lang, metrics\)"),
])
def test_bad_results_get_clear_errors(results, message):
    with pytest.raises(ValueError, match=message):
        table1_markdown(results)


def test_write_tables_atomically(tmp_path):
    md_path, json_path = write_tables(tmp_path / "eval", [(ALL, "multi30k", "en", _recalls(88.0))],
                                      [("ft", "vqa_v2", "en", {"vqa_score": 70.0})])
    md = md_path.read_text(encoding="utf-8")
    assert "| All-language fine-tune | 88.0 | - |" in md and "| ft | VQA v2 | en | 70.00 |" in md
    assert "UC2 paper: All-language fine-tune" in md               # paper rows on by default
    assert json.loads(json_path.read_text(encoding="utf-8"))["table1"]["rows"][0]["mean"] == 88.0
    before = md_path.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="duplicate"):
        write_tables(tmp_path / "eval", [(ALL, "multi30k", "en", {"r_mean": 1.0})] * 2)
    assert md_path.read_text(encoding="utf-8") == before          # a failed call changed nothing
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["results.json", "results.md"]
