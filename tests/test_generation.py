"""Greedy and beam search invariants (MMT facts sheet §11): greedy == beam 1 under its conditions (1), beam
scores == teacher-forced rescoring (2), length-penalty ranking on hand cases (3), cached == uncached
outputs (4), batching/padding invariance (6), language ids and en->fr end to end (12), every output ends
with </s> within the max length (13). Tiny models, CPU fp32 (one float64 check)."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from model.generation import (FinishedHypotheses, SearchConfig, beam_search, generate, greedy_search,
                              length_penalised, rescore)
from model.seq2seq import EncoderDecoder, UC2SourceEncoder, build_from_uc2, language_ids
from tests.helpers import one_thread  # noqa: F401 - autouse fixture
from tests.helpers_seq2seq import (EN_WORDS, FR_WORDS, SPECIAL, source_batch, source_examples, tiny_pretrained,
                                   tiny_seq2seq, toy_batch, train_toy)


@pytest.fixture(scope="module")
def trained_mmt() -> EncoderDecoder:
    """A tiny MMT model trained 500 steps on the toy en->fr task (~6 s on one core): its decisions vary
    (EOS at different steps, beam and greedy disagree with alpha > 0), unlike a random model's.

    The toy task has a plateau (loss ~ln 10: the unigram guess) that training leaves abruptly; 150 steps at
    lr 1e-2 left it on one CPU and not on another (last-bit differences of the kernels). Measured on one
    machine: 500 steps at 5e-3 leave it for seeds 0, 1, 2 (final loss 0.003-0.03, word accuracy 1.0) and
    not for seed 3 (0.54), so seed 0 is well inside the converging region."""
    torch.set_num_threads(1)
    return train_toy(build_from_uc2(tiny_pretrained(0), True, SPECIAL), steps=500, lr=5e-3)


def _nmt_view(mmt: EncoderDecoder) -> EncoderDecoder:
    """The same weights used as a text-only model."""
    return EncoderDecoder(UC2SourceEncoder(mmt.encoder.roberta, False, SPECIAL.pad), mmt.decoder).eval()


@pytest.fixture(params=["nmt", "mmt"])
def model(request, trained_mmt) -> EncoderDecoder:
    return trained_mmt if request.param == "mmt" else _nmt_view(trained_mmt)


def _src(seed: int = 5, size: int = 12) -> dict:
    return toy_batch(torch.Generator().manual_seed(seed), size)[0]


def _tokens(hyps) -> list[list[int]]:
    return [h.tokens for h in hyps]


@pytest.mark.parametrize("alpha,early", [(0.0, False), (1.0, True), (0.6, True)])
def test_greedy_equals_beam_one_when_alpha_zero_or_early_stopping(model, alpha, early):
    src = _src()
    config = SearchConfig(beam_size=1, length_penalty=alpha, early_stopping=early)
    greedy, beam1 = greedy_search(model, src, config), beam_search(model, src, config)
    assert _tokens(greedy) == _tokens(beam1)
    assert len({len(h.tokens) for h in greedy}) > 2  # a model whose EOS decisions vary
    for g, b in zip(greedy, beam1):
        assert abs(g.sum_logprob - b.sum_logprob) <= 1e-5


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0, 2.0])
def test_beam_scores_equal_teacher_forced_rescoring(model, alpha):
    src = _src()
    hyps = generate(model, src, SearchConfig(beam_size=4, length_penalty=alpha))
    for hyp, forced in zip(hyps, rescore(model, src, hyps)):
        # 1e-5 per scored token: the cached step's log-probs equal the full forward's within 1e-5 each (facts
        # sheet, invariant 4), so a sum of n of them within n * 1e-5 (the float64 test below checks 1e-9)
        n = len(hyp.tokens)
        assert abs(hyp.sum_logprob - forced) <= 1e-5 * n
        assert abs(hyp.score - forced / n ** alpha) <= 1e-5 * n / n ** alpha


def test_beam_scores_equal_rescoring_in_float64(trained_mmt):
    model = _nmt_view(copy.deepcopy(trained_mmt)).double()
    src = {k: (v.double() if v.is_floating_point() else v) for k, v in _src().items()}
    hyps = generate(model, src, SearchConfig(beam_size=5, length_penalty=1.0))
    for hyp, forced in zip(hyps, rescore(model, src, hyps)):
        assert abs(hyp.sum_logprob - forced) <= 1e-9


# Hand-made finished hypotheses (sum log-prob, length): the winner depends on alpha.
# alpha 0:   A -1.000  B -1.600  C -5.200            -> A
# alpha 0.6: A -0.660  B -0.609  C -0.985            -> B
# alpha 1:   A -0.500  B -0.320  C -0.325            -> B
# alpha 2:   A -0.250  B -0.064  C -0.020            -> C
_HAND = {"A": (-1.0, 2), "B": (-1.6, 5), "C": (-5.2, 16)}


@pytest.mark.parametrize("alpha,order", [(0.0, "ABC"), (0.6, "BAC"), (1.0, "BCA"), (2.0, "CBA")])
def test_length_penalty_ranks_hand_made_hypotheses(alpha, order):
    finished = FinishedHypotheses(size=3, alpha=alpha, early_stopping=False, max_len=20)
    for name, (total, n) in _HAND.items():
        finished.add([ord(name)] * (n - 1) + [SPECIAL.eos], total)
    ranked = sorted(finished.hyps, key=lambda h: -h.score)
    assert "".join(chr(h.tokens[0]) for h in ranked) == order
    assert chr(finished.best().tokens[0]) == order[0]
    assert all(math.isclose(h.score, h.sum_logprob / len(h.tokens) ** alpha) for h in ranked)


def test_finished_list_keeps_the_k_best_and_stops_by_the_seed_rule():
    finished = FinishedHypotheses(size=2, alpha=1.0, early_stopping=False, max_len=11)
    finished.add([5, 2], -1.0)  # score -0.5
    assert not finished.is_done(-0.1)  # not full
    finished.add([5, 6, 7, 2], -4.0)  # -1.0
    finished.add([5, 6, 2], -1.2)  # -0.4 replaces the -1.0 one
    assert sorted(h.score for h in finished.hyps) == pytest.approx([-0.5, -0.4])
    # worst (-0.5) >= best live sum / (max_len - 1) ** alpha: -5 / 10 = -0.5 -> done; -4.9 / 10 -> not done
    assert finished.is_done(-5.0) and not finished.is_done(-4.9)
    early = FinishedHypotheses(size=1, alpha=1.0, early_stopping=True, max_len=11)
    early.add([2], -3.0)
    assert early.is_done(0.0)
    assert length_penalised(-6.0, 4, 0.5) == -3.0


@pytest.mark.parametrize("beam", [1, 4])
def test_cached_and_uncached_search_give_identical_outputs(model, beam):
    src = _src()
    cached = generate(model, src, SearchConfig(beam_size=beam, use_cache=True))
    uncached = generate(model, src, SearchConfig(beam_size=beam, use_cache=False))
    assert _tokens(cached) == _tokens(uncached)
    assert all(abs(a.score - b.score) <= 1e-5 for a, b in zip(cached, uncached))


def _alone(src: dict, i: int) -> dict:
    """Example i as a batch of one, without the batch's padding (2 regions per toy example)."""
    n = int((src["input_ids"][i] != SPECIAL.pad).sum())
    regions = src["img_feat"].shape[1]
    return {"input_ids": src["input_ids"][i:i + 1, :n], "position_ids": src["position_ids"][i:i + 1, :n],
            "img_feat": src["img_feat"][i:i + 1], "img_pos_feat": src["img_pos_feat"][i:i + 1],
            "attn_masks": torch.ones(1, n + regions, dtype=torch.long),
            "gather_index": torch.arange(n + regions)[None]}


@pytest.mark.parametrize("beam", [1, 4])
def test_output_does_not_depend_on_batch_or_padding(model, beam):
    src = _src(size=6)
    config = SearchConfig(beam_size=beam)
    together = generate(model, src, config)
    assert (src["input_ids"] == SPECIAL.pad).any()
    for i in range(6):
        [hyp] = generate(model, _alone(src, i), config)
        assert hyp.tokens == together[i].tokens
        assert abs(hyp.score - together[i].score) <= 1e-5


def test_beam_one_never_scores_below_greedy_with_alpha_and_no_early_stop(trained_mmt):
    """With alpha > 0 and no early stop, beam 1 may keep searching after a finished hypothesis (a longer
    one could still score better by sum / n^alpha), so it can differ from greedy, and then only upwards."""
    src = _src(seed=11, size=32)
    config = SearchConfig(beam_size=1, length_penalty=1.0, early_stopping=False)
    for g, b in zip(greedy_search(trained_mmt, src, config), beam_search(trained_mmt, src, config)):
        assert b.tokens == g.tokens or b.score >= g.score - 1e-6


@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("batch_max_len", [False, True])
def test_every_output_ends_with_eos_within_max_length(beam, batch_max_len):
    model = tiny_seq2seq(use_images=True)  # random: never chooses EOS by itself
    lengths = [4, 9, 6]
    src = source_batch(source_examples(lengths))
    hyps = generate(model, src, SearchConfig(beam_size=beam, batch_max_len=batch_max_len))
    for n, hyp in zip(lengths, hyps):
        limit = int(1.5 * (max(lengths) if batch_max_len else n) + 10)
        assert hyp.tokens[-1] == SPECIAL.eos and SPECIAL.eos not in hyp.tokens[:-1]
        assert len(hyp.tokens) + 1 <= int(1.5 * max(lengths) + 10)  # BOS + tokens
        assert len(hyp.tokens) + 1 == limit  # this model runs to the limit: the limit is the rule's
    with torch.no_grad():
        model.decoder.output.bias[SPECIAL.eos] += 100.0  # now EOS at once
    assert all(h.tokens == [SPECIAL.eos] for h in generate(model, src, SearchConfig(beam_size=beam)))


def test_search_config_is_checked():
    with pytest.raises(ValueError, match="beam_size must be >= 1"):
        SearchConfig(beam_size=0)


def test_language_ids_do_not_depend_on_direction():
    assert language_ids(["en", "de"]) == {"de": 0, "en": 1, "img": 2}
    assert language_ids(["de", "en"]) == {"de": 0, "en": 1, "img": 2}
    assert language_ids(["en", "fr"]) == {"en": 0, "fr": 1, "img": 2}
    assert language_ids(["fr", "en"], with_image=False) == {"en": 0, "fr": 1}
    with pytest.raises(ValueError, match="duplicates"):
        language_ids(["en", "en"])


def _word_accuracy(hyps, tgt) -> float:
    right = total = 0
    for hyp, ref in zip(hyps, tgt.tolist()):
        ref = [t for t in ref[1:] if t != SPECIAL.pad]
        right += sum(a == b for a, b in zip(hyp.tokens, ref))
        total += len(ref)
    return right / total


def test_en_to_fr_trains_and_decodes(trained_mmt):
    """The toy en->fr MMT model (source sorts before target: the seed's broken case) learnt to translate:
    its greedy and beam outputs are French-side words, ending with </s>, mostly right."""
    src, tgt = toy_batch(torch.Generator().manual_seed(123), 16)
    for beam in (1, 4):
        hyps = generate(trained_mmt, src, SearchConfig(beam_size=beam))
        words = [t for h in hyps for t in h.tokens[:-1]]
        assert all(t in FR_WORDS for t in words) and not any(t in EN_WORDS for t in words)
        assert _word_accuracy(hyps, tgt) >= 0.5
