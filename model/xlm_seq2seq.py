"""Encoder-decoder from the seed's XLM-style model (``model.xlm.XlmModel``): VTLM-C / TLM / random init.

Uses the shared translation pieces of ``model.seq2seq`` (decoder with K/V cache, ``EncoderDecoder``,
search in ``model.generation``); this module adds only what the XLM layout needs:

* :class:`XlmSourceEncoder`: the pretrained ``XlmModel`` as source encoder; MMT puts the regions first
  (the seed's ``visual_first``), NMT reads text keys only, so images cannot change its output;
* :func:`xlm_decoder_config` and :func:`init_decoder_from_xlm`: the seed's ``--init_dec_from_enc`` for this
  layout (every decoder tensor copied from the encoder checkpoint, each layer's cross-attention and its
  LayerNorm from that layer's self-attention and ``layer_norm1``), output = tied projection with the
  checkpoint's ``pred_layer.proj`` bias, target-language row of ``lang_embeddings``;
* :func:`build_from_xlm`.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from model.seq2seq import (DecoderConfig, EncoderDecoder, EncoderOutput, SpecialIds, TransformerDecoder,
                           init_decoder_weights)
from model.xlm import LN_EPS, XlmModel

SOURCE_KEYS = ("input_ids", "position_ids", "txt_mask", "side_ids", "pair_langs")
IMAGE_KEYS = ("img_feat", "img_pos_feat", "img_valid")


class XlmSourceEncoder(nn.Module):
    """``XlmModel`` as a translation encoder: states (B, Ni + Ls, d) with regions first for MMT, (B, Ls, d)
    for NMT. Source batch keys: :data:`SOURCE_KEYS` (+ :data:`IMAGE_KEYS` for MMT)."""

    def __init__(self, xlm: XlmModel, use_images: bool) -> None:
        super().__init__()
        self.xlm = xlm
        self.use_images = use_images

    @property
    def hidden_size(self) -> int:
        return self.xlm.cfg.dim

    def source_lengths(self, src: dict) -> torch.Tensor:
        """Text length per sentence including its specials (regions not counted) (B,) long."""
        return src["txt_mask"].sum(1)

    def forward(self, src: dict) -> EncoderOutput:
        if self.use_images:
            missing = [k for k in IMAGE_KEYS if k not in src]
            if missing:
                raise KeyError(f"MMT source batch lacks {missing} (an image-aware collate provides them)")
            states, keep = self.xlm(src)
        else:  # NMT: hand over text keys only, so image tensors cannot reach the model
            states, keep = self.xlm({k: src[k] for k in SOURCE_KEYS}, use_image=False)
        return EncoderOutput(states, keep)


def xlm_decoder_config(xlm: XlmModel, tgt_lang: str) -> DecoderConfig:
    """Decoder shape of the seed: the encoder's, tied projection only, language row of ``tgt_lang``."""
    cfg = xlm.cfg
    return DecoderConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.dim, num_layers=cfg.n_layers,
                         num_heads=cfg.n_heads, intermediate_size=cfg.ffn_dim, hidden_act="gelu",
                         hidden_dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
                         embedding_eps=LN_EPS, layer_eps=LN_EPS, max_positions=cfg.max_positions,
                         position_offset=0, num_types=len(cfg.lang2id), type_id=cfg.lang2id[tgt_lang],
                         output_transform=False)


def _layer_plan(i: int) -> dict[str, str]:
    """Decoder layer i tensor (without ``layer.i.``) -> XlmModel tensor."""
    plan = {}
    for block in ("attention", "crossattention"):  # cross-attention := the layer's self-attention
        for ours, theirs in (("query", "q_lin"), ("key", "k_lin"), ("value", "v_lin")):
            for p in ("weight", "bias"):
                plan[f"{block}.self.{ours}.{p}"] = f"attentions.{i}.{theirs}.{p}"
        for p in ("weight", "bias"):
            plan[f"{block}.output.dense.{p}"] = f"attentions.{i}.out_lin.{p}"
            plan[f"{block}.output.LayerNorm.{p}"] = f"layer_norm1.{i}.{p}"
    for p in ("weight", "bias"):
        plan[f"intermediate.dense.{p}"] = f"ffns.{i}.lin1.{p}"
        plan[f"output.dense.{p}"] = f"ffns.{i}.lin2.{p}"
        plan[f"output.LayerNorm.{p}"] = f"layer_norm2.{i}.{p}"
    return plan


def xlm_copy_plan(n_layers: int) -> dict[str, str]:
    """Every decoder state-dict name -> the XlmModel name it is initialised from."""
    plan = {"embeddings.word_embeddings.weight": "embeddings.weight",
            "embeddings.position_embeddings.weight": "position_embeddings.weight",
            "embeddings.token_type_embeddings.weight": "lang_embeddings.weight",
            "embeddings.LayerNorm.weight": "layer_norm_emb.weight",
            "embeddings.LayerNorm.bias": "layer_norm_emb.bias",
            "output.weight": "embeddings.weight",  # tied to the decoder's own word embedding
            "output.bias": "pred_layer.proj.bias"}
    for i in range(n_layers):
        plan.update({f"layer.{i}.{k}": v for k, v in _layer_plan(i).items()})
    return plan


def init_decoder_from_xlm(decoder: TransformerDecoder, xlm: XlmModel) -> dict[str, str]:
    """Copy (clone) the encoder checkpoint into the decoder by :func:`xlm_copy_plan`; returns the plan."""
    source = xlm.state_dict()
    target = decoder.state_dict()
    plan = xlm_copy_plan(len(decoder.layer))
    uncovered = sorted(set(target) - set(plan))
    if uncovered:
        raise ValueError(f"decoder tensors without a source in the XLM checkpoint: {uncovered[:8]}")
    with torch.no_grad():
        for dst, src in plan.items():
            if source[src].shape != target[dst].shape:
                raise ValueError(f"cannot copy {src} {tuple(source[src].shape)} into decoder {dst} "
                                 f"{tuple(target[dst].shape)}")
            target[dst].copy_(source[src])
    return plan


def build_from_xlm(xlm: XlmModel, tgt_lang: str, use_images: bool, special: SpecialIds,
                   init_dec_from_enc: bool = True) -> EncoderDecoder:
    """Encoder = a deep copy of ``xlm``; decoder from the same weights (or random: the scratch recipe)."""
    if special.pad != xlm.cfg.pad_index:
        raise ValueError(f"pad id {special.pad} differs from the XLM model's pad_index {xlm.cfg.pad_index}")
    decoder = TransformerDecoder(xlm_decoder_config(xlm, tgt_lang), special)
    if init_dec_from_enc:
        init_decoder_from_xlm(decoder, xlm)
    else:
        init_decoder_weights(decoder)
    return EncoderDecoder(XlmSourceEncoder(copy.deepcopy(xlm), use_images), decoder)
