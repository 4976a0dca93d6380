"""Encoder-decoder for (multimodal) machine translation: a pretrained encoder + a decoder built from it.

The VTLM recipe (Caglayan et al. 2021, ``--init_dec_from_enc``) initialises **both** halves from one
pretrained checkpoint: the encoder is the checkpoint, the decoder is a copy of it whose every layer gains a
cross-attention initialised as a copy of that layer's self-attention (and LayerNorm); the output layer is
tied to the decoder's own input embedding. Encoder and decoder do not share any tensor.

Parts (all post-LN, module names in the Hugging Face / UC2 layout so copies go by name):

* :class:`EncoderOutput` ``(states (B, S, H), keep (B, S) bool)``: what every encoder returns.
* :class:`UC2SourceEncoder`: the UC2/XLM-R backbone (``roberta``) as a source encoder. MMT (``use_images``)
  encodes text + regions packed as the collate packs them; NMT reads only ``input_ids``/``position_ids``
  and never touches image tensors, so its output cannot depend on them. Any module with the same
  ``forward(src) -> EncoderOutput`` and ``source_lengths(src)`` plugs in (e.g. an XLM-style encoder).
* :class:`TransformerDecoder`: embeddings (word + position + one row of a type/language table, LayerNorm,
  dropout), ``layer.{i}`` = ``attention`` (causal, K/V cache), ``crossattention`` (K/V of the encoder
  states computed once per source), ``intermediate``, ``output``; then :class:`TiedOutput`.
* :class:`EncoderDecoder`: ``encode``, teacher-forced ``loss``/``token_logprobs`` and the incremental
  interface that :mod:`model.generation` drives (``init_cache``, ``decode``, ``reorder_cache``).

Builders: :func:`build_from_uc2` (a ``UC2ForPretraining`` that was loaded from a UC2 / VTLM-C / TLM
checkpoint, initialised from XLM-R weights, or left random), :func:`load_seq2seq_state` (our own
fine-tuned checkpoints, strict: unexpected or missing keys fail loudly, unlike the seed's ``strict=False``).

Batches. ``src`` is a dict with the backbone keys of ``docs/ARCHITECTURE.md`` (``input_ids``,
``position_ids`` (B, Ls); for MMT also ``img_feat`` (B, Ni, D), ``img_pos_feat`` (B, Ni, 7),
``attn_masks`` (B, L), ``gather_index`` (B, L)). ``tgt`` (B, T) is ``BOS y_1 .. y_n EOS`` right-padded
with ``pad``; the loss predicts ``tgt[:, 1:]`` from ``tgt[:, :-1]``.

Token ids: :class:`SpecialIds` (UC2/XLM-R: ``<s>`` 0 begins, ``</s>`` 2 ends, pad 1; the XLM dictionary:
``</s>`` 1 both begins and ends, pad 2).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import DataError
from model.config import UC2ModelConfig
from model.heads import activation
from model.model import UC2ForPretraining, UC2Model, init_bert_weights
from model.weights import check_state_dict, init_from_xlmr, load_uc2_checkpoint, read_state_file


@dataclass(frozen=True)
class SpecialIds:
    """Ids the decoder and the search need."""

    bos: int
    """First decoder input token."""
    eos: int
    """Ends every hypothesis."""
    pad: int
    """Padding (targets and finished beams)."""

    @classmethod
    def xlmr(cls) -> "SpecialIds":
        """XLM-R / UC2 sentencepiece vocabulary: <s> 0, <pad> 1, </s> 2."""
        return cls(bos=0, eos=2, pad=1)

    @classmethod
    def xlm(cls) -> "SpecialIds":
        """The XLM/VTLM dictionary: <s> 0, </s> 1 (also BOS), <pad> 2."""
        return cls(bos=1, eos=1, pad=2)


def language_ids(langs: Sequence[str], with_image: bool = True) -> dict[str, int]:
    """XLM language ids: index in ``sorted(langs + ["img"])``, whatever the translation direction.

    en-de -> {de: 0, en: 1, img: 2}; en-fr -> {en: 0, fr: 1, img: 2}. Callers look ids up by language
    name, never by "source first", which is how the seed broke for en->fr (facts sheet §10.1).
    """
    if len(set(langs)) != len(langs) or "img" in langs:
        raise ValueError(f"language list {list(langs)} has duplicates or contains 'img'")
    return {name: i for i, name in enumerate(sorted([*langs, *(["img"] if with_image else [])]))}


@dataclass
class DecoderConfig:
    """Shape of :class:`TransformerDecoder` (``from_uc2`` copies an encoder's)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    """Dropout on embeddings and sub-layer outputs."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities (training only)."""
    embedding_eps: float = 1e-5
    """Epsilon of the embedding LayerNorm (and of the output transform)."""
    layer_eps: float = 1e-12
    """Epsilon of the LayerNorms inside layers."""
    max_positions: int = 514
    position_offset: int = 2
    """Position id of the first target token (XLM-R: 2, since 1 is the padding position; XLM: 0)."""
    num_types: int = 2
    """Rows of ``token_type_embeddings`` (UC2: text/image rows; XLM: one row per language)."""
    type_id: int = 0
    """Row added to every target token (UC2: 0 = text; XLM: the target language id)."""
    output_transform: bool = True
    """Output = dense, GELU, LayerNorm, tied projection (the XLM-R MLM head); False = tied projection only
    (XLM's ``pred_layer``)."""
    initializer_range: float = 0.02

    @classmethod
    def from_uc2(cls, config: UC2ModelConfig) -> "DecoderConfig":
        """Same shape and regularisation as a UC2 backbone."""
        return cls(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                   num_layers=config.num_hidden_layers, num_heads=config.num_attention_heads,
                   intermediate_size=config.intermediate_size, hidden_act=config.hidden_act,
                   hidden_dropout=config.hidden_dropout_prob,
                   attention_dropout=config.attention_probs_dropout_prob,
                   embedding_eps=config.layer_norm_eps, layer_eps=config.encoder_eps,
                   max_positions=config.max_position_embeddings, position_offset=config.pad_token_id + 1,
                   num_types=config.type_vocab_size, initializer_range=config.initializer_range)


class EncoderOutput(NamedTuple):
    """Encoder states (B, S, H) and which of them may be attended, keep (B, S) bool."""

    states: torch.Tensor
    keep: torch.Tensor

    def index_select(self, index: torch.Tensor) -> "EncoderOutput":
        """Rows ``index`` (N,) -> an EncoderOutput of batch N (beam expansion / reordering)."""
        return EncoderOutput(self.states.index_select(0, index), self.keep.index_select(0, index))


@dataclass
class DecoderCache:
    """Per-layer attention keys/values of an incremental decode (dh = H / heads).

    ``self_k``/``self_v`` (N, heads, t, dh) grow by one position per step, one row per decoder row.
    ``cross_k``/``cross_v`` (G, heads, S, dh) are the projected encoder states, computed once by
    :meth:`TransformerDecoder.init_cache`, and ``keep`` (G, S) their mask; they are stored once per source:
    decoder row r reads source row r // ``group`` (the beams of one sentence share their source, so beam
    reordering never copies them; cross-attention folds the group into the query axis).
    """

    cross_k: list[torch.Tensor]
    cross_v: list[torch.Tensor]
    keep: torch.Tensor
    self_k: list[torch.Tensor | None] = field(default_factory=list)
    self_v: list[torch.Tensor | None] = field(default_factory=list)
    length: int = 0
    """Target positions already decoded (the next token's position index)."""
    group: int = 1
    """Consecutive decoder rows per source row."""

    def reorder(self, index: torch.Tensor) -> None:
        """Keep decoder rows ``index`` (N',) in that order: beam reordering, beam expansion, dropping
        finished rows. The source rows follow; they stay shared when the new rows come in equal runs per
        source (as beam search makes them), else each row gets its own copy."""
        for tensors in (self.self_k, self.self_v):
            for i, tensor in enumerate(tensors):
                if tensor is not None:
                    tensors[i] = tensor.index_select(0, index)
        sources = torch.div(index, self.group, rounding_mode="floor")  # (N',) source row of each new row
        firsts, group = _equal_runs(sources)
        if group is None:  # not grouped: one source copy per row
            firsts, group = sources, 1
        for tensors in (self.cross_k, self.cross_v):
            for i, tensor in enumerate(tensors):
                tensors[i] = tensor.index_select(0, firsts)
        self.keep = self.keep.index_select(0, firsts)
        self.group = group


def _equal_runs(values: torch.Tensor) -> tuple[torch.Tensor, int | None]:
    """(run values, run length) when ``values`` (N,) is runs of one common length, else (values, None)."""
    runs = torch.unique_consecutive(values)
    if values.numel() == 0 or values.numel() % runs.numel():
        return values, None
    size = values.numel() // runs.numel()
    if not torch.equal(values.view(-1, size), runs[:, None].expand(-1, size)):
        return values, None
    return runs, size


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, L, H) -> (N, heads, L, H / heads)."""
    n, length, h = x.shape
    return x.view(n, length, heads, h // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(N, heads, L, dh) -> (N, L, heads * dh)."""
    n, heads, length, dh = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * dh)


class Projections(nn.Module):
    """``query``/``key``/``value`` Linear(H, H): the same names as UC2's ``attention.self``."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)


class ResidualNorm(nn.Module):
    """``output``: LayerNorm(dropout(dense(x)) + residual), names as UC2's ``attention.output``."""

    def __init__(self, in_size: int, hidden: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_size, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """x (N, L, in_size), residual (N, L, H) -> (N, L, H)."""
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class DecoderAttention(nn.Module):
    """Post-LN attention block (``self`` projections + ``output``), causal self- or cross-attention."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.dropout_p = config.attention_dropout
        self.self = Projections(config.hidden_size)
        self.output = ResidualNorm(config.hidden_size, config.hidden_size, config.layer_eps, config.hidden_dropout)

    def keys_values(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """states (N, L, H) -> keys, values (N, heads, L, H / heads)."""
        return (_split_heads(self.self.key(states), self.num_heads),
                _split_heads(self.self.value(states), self.num_heads))

    def attend(self, hidden: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None, group: int = 1) -> torch.Tensor:
        """hidden (N, T, H) queries keys/values (N / group, heads, K, dh): query row r reads key row
        r // group; mask broadcastable to (N / group, heads, T, K), True = may attend
        -> post-LN output (N, T, H)."""
        q = _split_heads(self.self.query(hidden), self.num_heads)  # (N, heads, T, dh)
        n, heads, t, dh = q.shape
        if group > 1:  # the group's queries side by side: (N / group, heads, group * T, dh)
            q = q.view(n // group, group, heads, t, dh).transpose(1, 2).reshape(n // group, heads, group * t, dh)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout_p if self.training else 0.0)
        if group > 1:
            ctx = ctx.view(n // group, heads, group, t, dh).transpose(1, 2).reshape(n, heads, t, dh)
        return self.output(_merge_heads(ctx), hidden)


class DecoderLayer(nn.Module):
    """``attention`` (causal) -> ``crossattention`` -> ``intermediate`` -> ``output``, each post-LN."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.attention = DecoderAttention(config)
        self.crossattention = DecoderAttention(config)
        self.intermediate = nn.Sequential()
        self.intermediate.add_module("dense", nn.Linear(config.hidden_size, config.intermediate_size))
        self.intermediate.add_module("act", activation(config.hidden_act))
        self.output = ResidualNorm(config.intermediate_size, config.hidden_size, config.layer_eps,
                                   config.hidden_dropout)

    def forward(self, hidden: torch.Tensor, self_kv: tuple[torch.Tensor, torch.Tensor],
                self_mask: torch.Tensor | None, cross_kv: tuple[torch.Tensor, torch.Tensor],
                cross_mask: torch.Tensor, group: int = 1) -> torch.Tensor:
        """hidden (N, T, H); self_kv keys/values of all target positions so far (N, heads, t, dh);
        cross_kv of the source (N / group, heads, S, dh); masks True = may attend -> (N, T, H)."""
        hidden = self.attention.attend(hidden, *self_kv, self_mask)
        hidden = self.crossattention.attend(hidden, *cross_kv, cross_mask, group)
        return self.output(self.intermediate(hidden), hidden)


class DecoderEmbeddings(nn.Module):
    """LayerNorm(word + position + type/language row) then dropout (UC2 text embeddings, XLM embeddings)."""

    def __init__(self, config: DecoderConfig, pad_id: int) -> None:
        super().__init__()
        h = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, h, padding_idx=pad_id)
        self.position_embeddings = nn.Embedding(config.max_positions, h)
        self.token_type_embeddings = nn.Embedding(config.num_types, h)
        self.LayerNorm = nn.LayerNorm(h, eps=config.embedding_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, type_id: int) -> torch.Tensor:
        """ids (N, T), positions (T,) -> (N, T, H)."""
        emb = self.word_embeddings(ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[type_id]
        return self.dropout(self.LayerNorm(emb))


class TiedOutput(nn.Module):
    """Vocabulary projection whose weight *is* the decoder's word embedding (one Parameter), own bias.

    With ``transform``: ``dense`` -> GELU -> ``layer_norm`` first, the XLM-R MLM head (``cls``) layout, so
    a pretrained MLM head initialises it; without: XLM's ``pred_layer.proj``.
    """

    def __init__(self, config: DecoderConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        h = config.hidden_size
        self.transform = config.output_transform
        if self.transform:
            self.dense = nn.Linear(h, h)
            self.act = activation("gelu")
            self.layer_norm = nn.LayerNorm(h, eps=config.embedding_eps)
        self.weight = word_embeddings.weight  # tied
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., H) -> logits (..., V)."""
        if self.transform:
            hidden = self.layer_norm(self.act(self.dense(hidden)))
        return F.linear(hidden, self.weight, self.bias)


class TransformerDecoder(nn.Module):
    """Post-LN transformer decoder with an incremental (cached) forward; see the module docstring."""

    def __init__(self, config: DecoderConfig, special: SpecialIds) -> None:
        super().__init__()
        self.config = config
        self.special = special
        self.embeddings = DecoderEmbeddings(config, special.pad)
        self.layer = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.output = TiedOutput(config, self.embeddings.word_embeddings)

    def init_cache(self, enc: EncoderOutput) -> DecoderCache:
        """Project the encoder states to every layer's cross-attention keys/values, once per source."""
        ks, vs = zip(*(layer.crossattention.keys_values(enc.states) for layer in self.layer))
        n = len(self.layer)
        return DecoderCache(list(ks), list(vs), enc.keep, self_k=[None] * n, self_v=[None] * n)

    def forward(self, ids: torch.Tensor, enc: EncoderOutput | None = None,
                cache: DecoderCache | None = None) -> torch.Tensor:
        """Hidden states (N, T, H) of target tokens ids (N, T).

        Without ``cache``: ids is a whole prefix (positions 0..T-1), attended causally; cross keys/values
        are projected from ``enc``. With ``cache``: ids continue the cached prefix (positions
        cache.length..), self keys/values are appended to the cache and ``enc`` is not needed.
        """
        if cache is None:
            if enc is None:
                raise ValueError("TransformerDecoder.forward needs enc (or a cache from init_cache(enc))")
            cache = self.init_cache(enc)
        start, t = cache.length, ids.shape[1]
        positions = torch.arange(start, start + t, device=ids.device) + self.config.position_offset
        hidden = self.embeddings(ids, positions, self.config.type_id)  # (N, T, H)
        # Query i (absolute start + i) may see key j <= start + i; a single new token sees everything.
        self_mask = None if t == 1 else torch.ones(t, start + t, dtype=torch.bool, device=ids.device).tril(start)
        cross_mask = cache.keep[:, None, None, :]  # (G, 1, 1, S): padded source slots get zero weight
        for i, layer in enumerate(self.layer):
            k, v = layer.attention.keys_values(hidden)
            if cache.self_k[i] is not None:
                k, v = torch.cat([cache.self_k[i], k], dim=2), torch.cat([cache.self_v[i], v], dim=2)
            cache.self_k[i], cache.self_v[i] = k, v
            hidden = layer(hidden, (k, v), self_mask, (cache.cross_k[i], cache.cross_v[i]), cross_mask, cache.group)
        cache.length = start + t
        return hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., H) -> vocabulary logits (..., V)."""
        return self.output(hidden)


class UC2SourceEncoder(nn.Module):
    """The UC2/XLM-R backbone as a translation source encoder (``roberta`` keeps the checkpoint names).

    ``use_images=False`` (NMT): text only, from ``input_ids``/``position_ids``; image keys in ``src`` are
    never read. ``use_images=True`` (MMT): text + regions, packed by ``gather_index``; every region slot of
    ``attn_masks`` is attended (regions are never masked in translation).
    """

    def __init__(self, backbone: UC2Model, use_images: bool, pad_id: int) -> None:
        super().__init__()
        self.roberta = backbone
        self.use_images = use_images
        self.pad_id = pad_id

    @property
    def hidden_size(self) -> int:
        return self.roberta.config.hidden_size

    def source_lengths(self, src: dict[str, torch.Tensor]) -> torch.Tensor:
        """Text length per sentence including its special tokens (regions not counted) (B,) long."""
        return (src["input_ids"] != self.pad_id).sum(1)

    def forward(self, src: dict[str, torch.Tensor]) -> EncoderOutput:
        """src batch (module docstring) -> EncoderOutput (B, S, H), (B, S)."""
        if not self.use_images:
            keep = src["input_ids"] != self.pad_id  # (B, Ls)
            return EncoderOutput(self.roberta(src["input_ids"], src["position_ids"], attn_masks=keep.long()), keep)
        missing = [k for k in ("img_feat", "img_pos_feat", "attn_masks", "gather_index") if k not in src]
        if missing:
            raise KeyError(f"MMT source batch lacks {missing} (an image-aware collate provides them)")
        states = self.roberta(src["input_ids"], src["position_ids"], src["img_feat"], src["img_pos_feat"],
                              src["attn_masks"], src["gather_index"])
        return EncoderOutput(states, src["attn_masks"].bool())


class EncoderDecoder(nn.Module):
    """``encoder`` (any module returning :class:`EncoderOutput`) + ``decoder`` (:class:`TransformerDecoder`).

    Training: :meth:`loss` (token cross-entropy, mean over real target tokens, no label smoothing).
    Generation (:mod:`model.generation`) uses :meth:`encode`, :meth:`init_cache`, :meth:`decode` and
    :meth:`reorder_cache`; the search itself lives outside the network.
    """

    def __init__(self, encoder: nn.Module, decoder: TransformerDecoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.special = decoder.special

    def encode(self, src: dict[str, torch.Tensor]) -> EncoderOutput:
        """src batch -> EncoderOutput."""
        return self.encoder(src)

    def source_lengths(self, src: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) source text lengths including specials (the max-length rule's input)."""
        return self.encoder.source_lengths(src)

    def init_cache(self, enc: EncoderOutput) -> DecoderCache:
        """Cache holding the cross-attention keys/values of ``enc`` and no target positions yet."""
        return self.decoder.init_cache(enc)

    @staticmethod
    def reorder_cache(cache: DecoderCache, index: torch.Tensor) -> None:
        """Select/reorder the cache's rows (beam index of the search)."""
        cache.reorder(index)

    def decode(self, ids: torch.Tensor, enc: EncoderOutput | None = None,
               cache: DecoderCache | None = None, last_only: bool = False) -> torch.Tensor:
        """Next-token log-probabilities (N, T, V) for target ids (N, T), or (N, V) of the last position
        only with ``last_only``; cached or whole-prefix (see :meth:`TransformerDecoder.forward`)."""
        hidden = self.decoder(ids, enc, cache)  # (N, T, H)
        if last_only:
            hidden = hidden[:, -1]
        return F.log_softmax(_at_least_fp32(self.decoder.logits(hidden)), dim=-1)

    def forward(self, src: dict[str, torch.Tensor], tgt: torch.Tensor) -> torch.Tensor:
        """Teacher-forced hidden states (B, T-1, H) of tgt[:, :-1]."""
        return self.decoder(tgt[:, :-1], self.encode(src))

    def token_logprobs(self, src: dict[str, torch.Tensor], tgt: torch.Tensor) -> torch.Tensor:
        """log p(tgt[:, t] | tgt[:, :t], src) (B, T-1), 0 where the target is padding."""
        hidden = self(src, tgt)
        gold = tgt[:, 1:]
        real = gold != self.special.pad
        # The vocabulary projection only runs over real target tokens.
        logits = _at_least_fp32(self.decoder.logits(hidden[real]))  # (n, V)
        logp = torch.zeros(gold.shape, dtype=logits.dtype, device=gold.device)
        logp[real] = F.log_softmax(logits, dim=-1).gather(1, gold[real].unsqueeze(1)).squeeze(1)
        return logp

    def loss(self, src: dict[str, torch.Tensor], tgt: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Mean token cross-entropy over real target tokens, and their number."""
        hidden = self(src, tgt)
        gold = tgt[:, 1:]
        real = gold != self.special.pad
        logits = _at_least_fp32(self.decoder.logits(hidden[real]))  # (n, V)
        return F.cross_entropy(logits, gold[real]), int(real.sum())


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (autocast) go to fp32 before a softmax; fp32/fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def init_decoder_weights(decoder: TransformerDecoder) -> None:
    """Random BERT-style initialisation (N(0, initializer_range) weights, zero biases, unit LayerNorms, zero
    padding embedding row), output bias zero."""
    init_bert_weights(decoder, decoder.config.initializer_range)
    nn.init.zeros_(decoder.output.bias)


def init_decoder_from_uc2(decoder: TransformerDecoder, pretrained: UC2ForPretraining) -> dict[str, str]:
    """``init_dec_from_enc`` for the UC2 backbone; returns {decoder tensor: source tensor} for every copy.

    Embeddings, every layer's ``attention``/``intermediate``/``output`` and the output transform + bias
    (from the MLM head ``cls``) are copied; ``layer.i.crossattention`` := ``roberta.encoder.layer.i.attention``
    (self-attention projections and LayerNorm alike). Copies are clones: nothing is shared afterwards.
    """
    src = {k: v.detach() for k, v in pretrained.state_dict().items()}
    plan = _uc2_copy_plan(decoder, pretrained.config.num_hidden_layers)
    target = decoder.state_dict()
    with torch.no_grad():
        for dst, source in plan.items():
            if src[source].shape != target[dst].shape:
                raise ValueError(f"cannot copy {source} {tuple(src[source].shape)} into decoder {dst} "
                                 f"{tuple(target[dst].shape)}")
            target[dst].copy_(src[source])
    return plan


def _uc2_copy_plan(decoder: TransformerDecoder, encoder_layers: int) -> dict[str, str]:
    """Decoder state-dict name -> UC2ForPretraining name, for every decoder tensor."""
    if encoder_layers != len(decoder.layer):
        raise ValueError(f"decoder has {len(decoder.layer)} layers, the encoder {encoder_layers}")
    plan = {"embeddings.word_embeddings.weight": "roberta.embeddings.word_embeddings.weight",
            "embeddings.position_embeddings.weight": "roberta.embeddings.position_embeddings.weight",
            "embeddings.token_type_embeddings.weight": "roberta.embeddings.new_token_type_embeddings.weight",
            "embeddings.LayerNorm.weight": "roberta.embeddings.LayerNorm.weight",
            "embeddings.LayerNorm.bias": "roberta.embeddings.LayerNorm.bias",
            "output.bias": "cls.bias"}
    if decoder.output.transform:
        for name in ("dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias"):
            plan[f"output.{name}"] = f"cls.{name}"
    for name in decoder.state_dict():
        if not name.startswith("layer."):
            continue
        _, i, block, rest = name.split(".", 3)
        source_block = "attention" if block == "crossattention" else block
        plan[name] = f"roberta.encoder.layer.{i}.{source_block}.{rest}"
    plan["output.weight"] = plan["embeddings.word_embeddings.weight"]  # tied: same Parameter
    return plan


def build_from_uc2(pretrained: UC2ForPretraining, use_images: bool, special: SpecialIds | None = None,
                   init_dec_from_enc: bool = True, decoder_config: DecoderConfig | None = None) -> EncoderDecoder:
    """Encoder-decoder from a UC2 pretraining model (loaded from a UC2/VTLM-C/TLM checkpoint, from XLM-R,
    or random).

    The encoder is a deep copy of ``pretrained.roberta`` (``pretrained`` is left untouched); the decoder
    copies the same weights (``init_dec_from_enc``) or starts random (the from-scratch recipe).
    """
    special = special or SpecialIds.xlmr()
    config = decoder_config or DecoderConfig.from_uc2(pretrained.config)
    if special.pad != pretrained.config.pad_token_id:
        raise ValueError(f"pad id {special.pad} differs from the backbone's pad_token_id "
                         f"{pretrained.config.pad_token_id}")
    decoder = TransformerDecoder(config, special)
    if init_dec_from_enc:
        init_decoder_from_uc2(decoder, pretrained)
    else:
        init_decoder_weights(decoder)
    encoder = UC2SourceEncoder(copy.deepcopy(pretrained.roberta), use_images, special.pad)
    return EncoderDecoder(encoder, decoder)


def load_seq2seq_state(model: EncoderDecoder, path_or_state: str | Path | dict[str, torch.Tensor]) -> None:
    """Load an :class:`EncoderDecoder` state dict (our own layout) strictly.

    Any unexpected or missing key, or a shape mismatch, raises DataError naming the keys: the seed's
    ``strict=False`` silently dropped ``regional_encodings.linear.bias`` (facts sheet §10.2).
    """
    is_path = isinstance(path_or_state, (str, Path))
    source = str(path_or_state) if is_path else "<state dict>"
    state = read_state_file(path_or_state) if is_path else check_state_dict(path_or_state, source)
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if unexpected or missing:
        raise DataError(f"{source}: not an encoder-decoder state dict of this shape: missing {missing[:8]}, "
                        f"unexpected {unexpected[:8]}")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise DataError(f"{source}: shape mismatch for {key!r}: file {tuple(value.shape)}, model "
                            f"{tuple(own[key].shape)}")
    model.load_state_dict(state, strict=True)


def count_parameters(module: nn.Module) -> int:
    """Distinct parameters (a tied tensor counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())



INIT_SOURCES = ("random", "uc2", "xlmr")


def load_pretrained(config: UC2ModelConfig, init: str, path: str | Path | None = None) -> UC2ForPretraining:
    """The pretrained model an encoder-decoder starts from.

    ``init``: ``"uc2"`` = a state dict with UC2 key names at ``path`` (a released UC2 checkpoint, or a
    VTLM-C/TLM checkpoint written by this project's pretraining); ``"xlmr"`` = a local Hugging Face XLM-R
    folder at ``path``; ``"random"`` = fresh BERT-style weights (the from-scratch recipe: build with
    ``init_dec_from_enc=False``).
    """
    if init not in INIT_SOURCES:
        raise ValueError(f"unknown init {init!r}; expected one of {INIT_SOURCES}")
    if init != "random" and path is None:
        raise ValueError(f"init {init!r} needs a path")
    model = UC2ForPretraining(config)
    if init == "uc2":
        load_uc2_checkpoint(model, path)
    elif init == "xlmr":
        init_from_xlmr(model, path)
    return model
