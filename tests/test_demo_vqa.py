"""VQA on the demo corpus through the real scripts: English and Japanese fine-tuning beat the
majority-answer baseline by a wide margin (issue 5), without any vision-language pretraining.

The corpus is the generated demo (smaller than ``make demo``'s), the model starts from a random
XLM-R-style stand-in turned into a UC2 checkpoint by ``scripts/xlmr_to_uc2.py``, and the demo VQA configs
are used with shorter schedules. ``make demo`` runs the same steps at full size (see README).
"""
from __future__ import annotations

import json

import pytest

from tests.helpers_demo import build_small_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_small_demo(tmp_path_factory.mktemp("demo_vqa"))


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_vqa_beats_majority_answer_by_a_wide_margin(demo, lang, monkeypatch, repo_root):
    import inf_vqa
    import train_vqa

    monkeypatch.setenv("UC2_DEMO_DIR", str(demo))
    run = demo / f"vqa_{lang}"
    train_vqa.main(["--config", str(repo_root / "config" / f"vqa_demo_{lang}.json"),
                    "--checkpoint", str(demo / "nopt" / "model_final.pt"),
                    "--model_config", str(demo / "nopt" / "model.json"), "--output_dir", str(run),
                    "--num_train_steps", "500", "--warmup_steps", "50", "--valid_steps", "0",
                    "--save_steps", "500", "--learning_rate", "1e-3"])
    output = run / "test.json"
    inf_vqa.main(["--run_dir", str(run), "--txt_db", str(demo / "data" / "txt_db" / f"vqa_{lang}_test.db"),
                  "--output", str(output), "--dataset", "demo"])
    predictions = json.loads(output.read_text(encoding="utf-8"))
    scores = json.loads((run / "test.scores.json").read_text(encoding="utf-8"))["metrics"]
    assert len(predictions) == scores["n_questions"] > 0
    assert {"question_id", "answer"} <= set(predictions[0])
    assert scores["vqa_score"] >= scores["majority_vqa_score"] + 20, scores
    assert scores["accuracy"] >= scores["majority_accuracy"] + 20, scores
