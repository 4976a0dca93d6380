"""VQA metrics on hand-made predictions: soft score (incl. all-OOV questions), accuracy, char BLEU."""
import math

import numpy as np
import pytest
import torch

from evaluation.vqa_metrics import (accuracy, bleu_char, majority_baseline, most_common_answer,
                               vqa_score)

# q0: predicted 3 is gold with 1.0; q1: predicted 1 not gold -> 0;
# q2: label 7 listed twice (0.3, 0.6) -> max 0.6, not the sum; q3: no in-vocabulary answer -> 0.
PRED = [3, 1, 7, 0]
LABELS = [[3, 5], [2], [7, 7], []]
SCORES = [[1.0, 0.3], [0.6], [0.3, 0.6], []]


def test_vqa_score_by_hand_with_all_oov_question_in_denominator():
    out = vqa_score(np.array(PRED), LABELS, SCORES)
    # (1.0 + 0 + 0.6 + 0) / 4 questions = 0.4
    assert out == pytest.approx({"vqa_score": 40.0, "n_questions": 4.0, "n_no_target": 1.0})
    assert all(type(v) is float for v in out.values())


def test_vqa_score_from_logits_takes_argmax():
    logits = torch.full((4, 8), -1.0)
    logits[torch.arange(4), torch.tensor(PRED)] = 2.0
    assert vqa_score(logits, LABELS, SCORES)["vqa_score"] == pytest.approx(40.0)


@pytest.mark.parametrize("labels, scores, message", [
    ([[1]], [[0.3]], "expected 2 label lists"),
    ([[1], [2, 3]], [[0.3], [0.3]], "question 1 has 2 labels but 1 scores"),
    ([[1], [2]], [[0.3], [1.5]], "question 1 has soft score 1.5"),
])
def test_vqa_score_bad_targets(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        vqa_score(np.array([1, 2]), labels, scores)


def test_vqa_score_rejects_float_indices():
    with pytest.raises(ValueError, match="integer answer indices"):
        vqa_score(np.array([1.0, 2.0]), [[1], [2]], [[1.0], [1.0]])


def test_accuracy_against_most_common_gold():
    preds = ["yes", "2", "red", "cat "]
    golds = [["yes", "yes", "no"],      # yes is the majority          -> right
             ["2", "3"],                # 2 and 3 tie; either counts   -> right
             ["blue", "red", "blue"],   # blue is the majority         -> wrong
             "cat"]                     # single gold, spaces stripped -> right
    assert accuracy(preds, golds) == {"accuracy": 75.0, "n_questions": 4.0}


def test_accuracy_errors_name_the_question():
    with pytest.raises(ValueError, match="question 1 needs at least one answer"):
        accuracy(["a", "b"], ["a", []])
    with pytest.raises(ValueError, match="2 predictions and 1 gold"):
        accuracy(["a", "b"], ["a"])


def test_bleu_char_by_hand():
    # hyp 赤い車です (5 chars) vs ref 赤い車でした (6 chars):
    # n-gram precisions 4/5, 3/4, 2/3, 1/2; brevity penalty exp(1 - 6/5)
    expected = 100 * math.exp(1 - 6 / 5) * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert bleu_char(["赤い車です"], ["赤い車でした"])["bleu"] == pytest.approx(expected, abs=0.01)
    # word tokenisation sees one unmatched token per side: the char tokeniser is what makes this non-zero
    import sacrebleu
    assert sacrebleu.corpus_bleu(["赤い車です"], [["赤い車でした"]], tokenize="13a").score == 0.0


def test_bleu_char_identical_and_multi_reference():
    assert bleu_char(["赤い車です", "白い犬です"], ["赤い車です", "白い犬です"])["bleu"] == pytest.approx(100.0)
    # question 0 has two references, question 1 one: the matching reference gives a perfect score
    out = bleu_char(["赤い車です", "白い犬です"], [["青い", "赤い車です"], "白い犬です"])
    assert out == pytest.approx({"bleu": 100.0, "n_questions": 2.0})


def test_majority_baseline_by_hand():
    train = ["yes", "no", "yes", ["2", "yes"]]           # yes x3, no x1, 2 x1
    assert most_common_answer(train) == "yes"
    golds = ["yes", "no", ["yes", "no", "yes"]]           # "yes" right on 0 and 2 -> 2/3
    labels, scores = [[0], [1], [0, 1]], [[1.0], [1.0], [0.9, 0.3]]   # (1 + 0 + 0.9) / 3
    out = majority_baseline(train, golds, ans2label={"yes": 0, "no": 1},
                            target_labels=labels, target_scores=scores)
    assert out == pytest.approx({"majority_accuracy": 200 / 3, "majority_vqa_score": 190 / 3})
    # a majority answer outside the vocabulary scores 0
    oov = majority_baseline(train, ans2label={"no": 1}, target_labels=labels, target_scores=scores)
    assert oov == {"majority_vqa_score": 0.0}
    with pytest.raises(ValueError, match="give eval_golds"):
        majority_baseline(train)
