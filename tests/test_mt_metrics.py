"""MT metrics (MMT facts sheet §8, §11.10-11): bleu_tok is sacreBLEU tokenize='none' on the same strings,
order-invariant, <<unk>> never matches; normalisation and BPE merging; bleu_detok/chrF are sacreBLEU's
with their signatures; METEOR 1.5 runs only for real (skipped with the reason when Java or the jar is
missing) and says which resources it used."""
from __future__ import annotations

import random
import shutil

import pytest
import sacrebleu

from utils import mt_metrics
from utils.mt_metrics import (bleu_detok, bleu_tok, chrf, detok_form, mark_unknown, merge_bpe, meteor, normalise,
                              tok_form, translation_scores)

HYPS = ["ein mann reitet auf einem pferd .", "zwei hunde spielen im schnee .", "eine frau mit rotem hut .",
        "ein kind isst ein eis", "leute stehen vor einem gebäude ."]
REFS = ["ein mann reitet ein pferd am strand .", "zwei hunde spielen im gras .", "eine frau mit einem roten hut .",
        "ein kleines kind isst ein eis .", "menschen stehen vor einem großen gebäude ."]


def test_bleu_tok_is_sacrebleu_tokenize_none():
    result = bleu_tok(HYPS, REFS)
    assert result.score == sacrebleu.corpus_bleu(HYPS, [REFS], tokenize="none").score
    assert 0 < result.score < 100
    assert "tok:none" in result.signature and "smooth:exp" in result.signature


def test_bleu_tok_is_order_invariant():
    pairs = list(zip(HYPS, REFS))
    random.Random(0).shuffle(pairs)
    hyps, refs = zip(*pairs)
    assert bleu_tok(list(hyps), list(refs)).score == bleu_tok(HYPS, REFS).score


def test_unknown_reference_words_never_match():
    refs = [mark_unknown(r.replace("pferd", "<unk>")) for r in REFS]
    assert "<<unk>>" in refs[0]
    with_unk = bleu_tok([HYPS[0].replace("pferd", "<unk>")] + HYPS[1:], refs).score
    wrong_word = bleu_tok([HYPS[0].replace("pferd", "zzz")] + HYPS[1:], refs).score
    assert with_unk == wrong_word


def test_normalise_and_bpe_merge():
    assert normalise("Über Straße") == "uber straße"
    assert normalise("Crème Brûlée À") == "creme brulee a"
    assert merge_bpe("ein Man@@ n rei@@ tet@@") == "ein Mann reitet"
    assert merge_bpe("rei@@ tet@@ ") == "reitet" and merge_bpe("a@@b") == "a@@b"


def test_tok_form_is_the_seeds_preprocessing():
    assert tok_form(["Ein Mann fährt ein <unk> Fahrrad.", "Man@@ n, «Hut»"], "de") == [
        "ein mann fahrt ein <unk> fahrrad .", 'mann , " hut "']


def test_bleu_detok_and_chrf_are_sacrebleus_with_signatures():
    hyps = detok_form(["Ein Man@@ n reitet .", "Zwei Hunde spielen ."], "de")
    refs = ["Ein Mann reitet ein Pferd.", "Zwei Hunde spielen im Gras."]
    assert hyps == ["Ein Mann reitet.", "Zwei Hunde spielen."]
    detok = bleu_detok(hyps, refs)
    assert detok.score == sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score
    assert "tok:13a" in detok.signature and "case:mixed" in detok.signature
    char = chrf(hyps, refs)
    assert char.score == sacrebleu.corpus_chrf(hyps, [refs]).score and "nc:6" in char.signature


def test_misaligned_inputs_are_refused():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        bleu_tok(["a", "b"], ["a"])


def test_translation_scores_from_raw_text():
    scores = translation_scores(["Ein Mann reitet ein Pferd."], ["Ein Mann reitet ein Pferd."], "de",
                                with_meteor=False)
    assert set(scores) == {"bleu_tok", "bleu_detok", "chrf"}
    assert all(r.score == pytest.approx(100.0) for r in scores.values())


def _meteor_available() -> None:
    if shutil.which("java") is None or mt_metrics.find_meteor_jar() is None:
        pytest.skip("METEOR not computable here: java or meteor-1.5.jar (pycocoevalcap) missing")


def test_meteor_runs_the_jar_and_names_its_resources():
    _meteor_available()
    de = meteor(["ein mann reitet ein pferd", "zwei hunde"], ["ein mann reitet ein pferd", "zwei hunde spielen"], "de")
    assert de.name == "meteor_exact_stem_de" and 0 < de.score < 100  # no German paraphrase table is shipped
    assert "modules:exact+stem" in de.signature


@pytest.mark.slow
def test_meteor_english_uses_the_shipped_paraphrases():
    """~100 s on 2 busy cores: the jar loads its 60 MB English paraphrase table."""
    _meteor_available()
    en = meteor(["a man rides a horse", "two dogs"], ["a man is riding a horse", "two dogs play"], "en")
    assert en.name == "meteor" and "paraphrase" in en.signature and 0 < en.score < 100


def test_meteor_without_java_is_none_with_the_reason(monkeypatch):
    monkeypatch.setattr(mt_metrics.shutil, "which", lambda name: None)
    result = meteor(["a"], ["a"], "de")
    assert result.score is None and "java not found" in result.note
