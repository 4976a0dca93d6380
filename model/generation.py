"""Greedy and batched beam search over an encoder-decoder, kept outside the network.

The model only has to offer (as :class:`model.seq2seq.EncoderDecoder` does)::

    model.special                    -> SpecialIds(bos, eos, pad)
    model.encode(src)                -> EncoderOutput(states (B, S, H), keep (B, S) bool)
    model.source_lengths(src)        -> (B,) source text lengths incl. special tokens
    model.init_cache(enc)            -> cache with the cross-attention keys/values of enc
    model.decode(ids, enc, cache, last_only=True) -> (N, V) next-token log-probabilities
    model.reorder_cache(cache, idx)  -> None (keeps rows idx, in that order)

Entry point: :func:`generate(model, src, SearchConfig(...))` (or :func:`greedy_search` /
:func:`beam_search` directly) -> one :class:`Hypothesis` per sentence, in
input order: its ``tokens`` (BOS excluded, always ending with EOS), ``sum_logprob`` (sum of the model's
log-probabilities of those tokens) and ``score`` = sum_logprob / len(tokens) ** alpha.

The search follows the seed (XLM ``generate_beam``), facts sheet §5:

* max length per sentence = int(a * source text length + b), a = 1.5, b = 10, counted with the BOS, so a
  hypothesis has at most max_len - 1 tokens. The seed used one max length per batch (from its longest
  source); ``batch_max_len=True`` does that, the default is per sentence so that a sentence's output does
  not depend on the batch it is decoded in.
* beam: k live hypotheses per sentence, the first one alone at step 1. Each step ranks the top 2k of
  (live score + log p(word)); an EOS candidate goes to the sentence's finished list (kept to its k best by
  sum_logprob / n ** alpha), the first k non-EOS candidates form the next beam. A sentence is done when it
  has k finished hypotheses and (``early_stopping`` or the worst finished score >= best candidate sum /
  (max_len - 1) ** alpha), or when it reaches its max length. The answer is the best finished hypothesis.
* at the last allowed position only EOS is considered, so every returned hypothesis is exactly the tokens
  that were scored. (The seed scored any word there and then replaced it with ``</s>``; its scores then
  disagree with a rescoring of its own output.)
* greedy (beam 1): argmax each step, same max length and forced final EOS. It equals beam 1 token for
  token when alpha = 0 or early_stopping is set; with alpha > 0 and no early stop, beam 1 keeps searching
  after a finished hypothesis when a longer one could still score better, so the two may differ.

``use_cache=False`` recomputes the whole target prefix every step (the cross-attention keys/values too),
for checking and benchmarking the cache; the results are the same up to float rounding.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from model.seq2seq import EncoderOutput


@dataclass(frozen=True)
class SearchConfig:
    """How to decode."""

    beam_size: int = 1
    """1 = greedy."""
    length_penalty: float = 1.0
    """alpha in score = sum log-prob / n ** alpha (the seed's default 1.0)."""
    early_stopping: bool = False
    """Stop a sentence as soon as it has beam_size finished hypotheses."""
    max_len_a: float = 1.5
    max_len_b: int = 10
    """Max length (with the BOS) = int(max_len_a * source text length + max_len_b)."""
    batch_max_len: bool = False
    """One max length per batch, from its longest source (the seed), instead of one per sentence."""
    use_cache: bool = True
    """Incremental decoding with key/value caches (False: recompute the prefix every step)."""

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.max_len_a < 0 or self.max_len_b < 2:
            raise ValueError(f"max length rule int({self.max_len_a} * len + {self.max_len_b}) must allow 2 tokens")


@dataclass
class Hypothesis:
    """A finished translation: tokens (BOS excluded, EOS last), their summed log-prob, ranking score."""

    tokens: list[int]
    sum_logprob: float
    score: float


def length_penalised(sum_logprob: float, length: int, alpha: float) -> float:
    """sum_logprob / length ** alpha (length = generated tokens including the final EOS, BOS excluded)."""
    return sum_logprob / math.pow(length, alpha)


def max_lengths(src_lengths: torch.Tensor, config: SearchConfig) -> list[int]:
    """Max hypothesis length (BOS included) per sentence, from source text lengths (B,)."""
    lengths = src_lengths.tolist()
    if config.batch_max_len:
        lengths = [max(lengths)] * len(lengths)
    return [int(config.max_len_a * n + config.max_len_b) for n in lengths]


@dataclass
class FinishedHypotheses:
    """The k best finished hypotheses of one sentence (the seed's ``BeamHypotheses``)."""

    size: int
    alpha: float
    early_stopping: bool
    max_len: int
    hyps: list[Hypothesis] = field(default_factory=list)

    @property
    def worst_score(self) -> float:
        return min(h.score for h in self.hyps) if self.hyps else math.inf

    def add(self, tokens: list[int], sum_logprob: float) -> None:
        """Keep the hypothesis if the list is not full or it beats the worst kept one."""
        score = length_penalised(sum_logprob, len(tokens), self.alpha)
        if len(self.hyps) < self.size or score > self.worst_score:
            self.hyps.append(Hypothesis(tokens, sum_logprob, score))
            if len(self.hyps) > self.size:
                self.hyps.remove(min(self.hyps, key=lambda h: h.score))

    def is_done(self, best_sum_logprob: float) -> bool:
        """Full, and no live hypothesis can beat the worst kept one even at the longest length."""
        if len(self.hyps) < self.size:
            return False
        if self.early_stopping:
            return True
        return self.worst_score >= length_penalised(best_sum_logprob, self.max_len - 1, self.alpha)

    def best(self) -> Hypothesis:
        return max(self.hyps, key=lambda h: h.score)


class _Stepper:
    """Next-token log-probs of the live rows, cached (one new token per step) or from the whole prefix."""

    def __init__(self, model: nn.Module, enc: EncoderOutput, rows: torch.Tensor, use_cache: bool) -> None:
        self.model = model
        self.cache = None
        if use_cache:
            self.cache = model.init_cache(enc)  # cross keys/values once per source, shared by its beams
            model.reorder_cache(self.cache, rows)
            self.enc = None
        else:
            self.enc = enc.index_select(rows)

    def step(self, prefix: torch.Tensor) -> torch.Tensor:
        """prefix (N, t) -> log p(next | prefix) (N, V)."""
        if self.cache is not None:
            return self.model.decode(prefix[:, -1:], cache=self.cache, last_only=True)
        return self.model.decode(prefix, self.enc, last_only=True)

    def select(self, rows: torch.Tensor) -> None:
        """Keep the rows ``rows`` (N',) in that order."""
        if self.cache is not None:
            self.model.reorder_cache(self.cache, rows)
        else:
            self.enc = self.enc.index_select(rows)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Decode without dropout and without autograd; restore the training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def generate(model: nn.Module, src: dict[str, torch.Tensor], config: SearchConfig) -> list[Hypothesis]:
    """Translate a source batch: greedy when ``config.beam_size == 1``, else beam search."""
    search = greedy_search if config.beam_size == 1 else beam_search
    return search(model, src, config)


def greedy_search(model: nn.Module, src: dict[str, torch.Tensor], config: SearchConfig) -> list[Hypothesis]:
    """Argmax decoding of a source batch (``config.beam_size`` is not used)."""
    with _eval_mode(model):
        enc = model.encode(src)
        return _greedy(model, enc, max_lengths(model.source_lengths(src), config), config)


def beam_search(model: nn.Module, src: dict[str, torch.Tensor], config: SearchConfig) -> list[Hypothesis]:
    """Beam search of a source batch with ``config.beam_size`` beams (1 allowed: the beam rules with one
    beam, which is not always greedy; see the module docstring)."""
    with _eval_mode(model):
        enc = model.encode(src)
        return _beam(model, enc, max_lengths(model.source_lengths(src), config), config)


def _greedy(model: nn.Module, enc: EncoderOutput, limits: list[int], config: SearchConfig) -> list[Hypothesis]:
    """Argmax decoding; a sentence leaves the batch when it emits EOS (forced at its last position)."""
    special, batch = model.special, enc.states.shape[0]
    device = enc.states.device
    rows = torch.arange(batch, device=device)
    stepper = _Stepper(model, enc, rows, config.use_cache)
    prefix = torch.full((batch, 1), special.bos, dtype=torch.long, device=device)
    sums = torch.zeros(batch, dtype=torch.float64, device=device)
    limit = torch.tensor(limits, device=device)
    out: list[Hypothesis | None] = [None] * batch
    t = 1
    while rows.numel():
        logp = stepper.step(prefix)  # (N, V)
        word = logp.argmax(-1)
        word = torch.where(t + 1 >= limit[rows], torch.full_like(word, special.eos), word)
        sums[rows] += logp.gather(1, word[:, None]).squeeze(1).double()
        prefix = torch.cat([prefix, word[:, None]], dim=1)
        ended = word == special.eos
        for r in ended.nonzero().flatten().tolist():
            sent, tokens = int(rows[r]), prefix[r, 1:].tolist()
            s = float(sums[sent])
            out[sent] = Hypothesis(tokens, s, length_penalised(s, len(tokens), config.length_penalty))
        if ended.any():
            alive = (~ended).nonzero().flatten()
            rows, prefix = rows[alive], prefix[alive]
            stepper.select(alive)
        t += 1
    return out  # type: ignore[return-value]  # every sentence ends by its max length


def _beam(model: nn.Module, enc: EncoderOutput, limits: list[int], config: SearchConfig) -> list[Hypothesis]:
    """Batched beam search (module docstring); done sentences leave the batch."""
    special, k, batch = model.special, config.beam_size, enc.states.shape[0]
    device = enc.states.device
    finished = [FinishedHypotheses(k, config.length_penalty, config.early_stopping, n) for n in limits]
    stepper = _Stepper(model, enc, torch.arange(batch, device=device).repeat_interleave(k), config.use_cache)
    prefix = torch.full((batch * k, 1), special.bos, dtype=torch.long, device=device)
    beam_scores = torch.full((batch, k), -math.inf, dtype=torch.float64, device=device)
    beam_scores[:, 0] = 0.0  # step 1: only the first beam is real
    active, t = list(range(batch)), 1
    while active:
        logp = stepper.step(prefix)  # (A * k, V)
        vocab = logp.shape[1]
        last = torch.tensor([t + 1 >= limits[s] for s in active], device=device).repeat_interleave(k)
        if last.any():  # only EOS may end a hypothesis at its last position
            eos_only = torch.full_like(logp, -math.inf)
            eos_only[:, special.eos] = logp[:, special.eos]
            logp = torch.where(last[:, None], eos_only, logp)
        cand = (logp.double() + beam_scores.view(-1, 1)).view(len(active), k * vocab)
        top_scores, top_ids = cand.topk(min(2 * k, k * vocab), dim=1)
        keep, next_beam = _advance(active, top_scores.tolist(), top_ids.tolist(), prefix, finished, vocab, k, t,
                                   special)
        if not keep:
            break
        scores, words, rows = zip(*next_beam)
        rows = torch.tensor(rows, device=device)
        prefix = torch.cat([prefix[rows], torch.tensor(words, device=device)[:, None]], dim=1)
        stepper.select(rows)
        beam_scores = torch.tensor(scores, dtype=torch.float64, device=device).view(len(keep), k)
        active = [active[j] for j in keep]
        t += 1
    return [f.best() for f in finished]


def _advance(active: list[int], top_scores: list[list[float]], top_ids: list[list[int]], prefix: torch.Tensor,
             finished: list[FinishedHypotheses], vocab: int, k: int, t: int, special) -> tuple[list[int], list]:
    """One beam step's bookkeeping: finished candidates, next live beams, which sentences go on.

    Returns (positions in ``active`` of the sentences still running, [(score, word, row)] * k for each)."""
    keep, next_beam = [], []
    for j, sent in enumerate(active):
        live = []
        for score, idx in zip(top_scores[j], top_ids[j]):
            if score == -math.inf:
                break
            beam, word = divmod(idx, vocab)
            row = j * k + beam
            if word == special.eos:
                finished[sent].add(prefix[row, 1:].tolist() + [word], score)
            else:
                live.append((score, word, row))
            if len(live) == k:
                break
        done = t + 1 >= finished[sent].max_len or finished[sent].is_done(top_scores[j][0])
        if done:
            continue
        live += [(-math.inf, special.pad, j * k)] * (k - len(live))  # tiny vocabularies only
        keep.append(j)
        next_beam.extend(live)
    return keep, next_beam


def rescore(model: nn.Module, src: dict[str, torch.Tensor], hyps: list[Hypothesis]) -> list[float]:
    """Teacher-forced sum log-prob of each hypothesis (BOS + tokens) given its source."""
    special = model.special
    longest = max(len(h.tokens) for h in hyps)
    tgt = torch.full((len(hyps), longest + 1), special.pad, dtype=torch.long)
    tgt[:, 0] = special.bos
    for i, h in enumerate(hyps):
        tgt[i, 1:len(h.tokens) + 1] = torch.tensor(h.tokens)
    with _eval_mode(model):
        return model.token_logprobs(src, tgt.to(src["input_ids"].device)).double().sum(1).tolist()
