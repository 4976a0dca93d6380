"""Encoder-decoder over the VTLM seed's XLM-style model (:mod:`model.xlm`), the facts sheet's configuration.

Same :class:`model.seq2seq.EncoderDecoder` and search as the UC2 backbone; what differs:

* :class:`XlmSourceEncoder` wraps an :class:`model.xlm.XlmModel`: the source is ``[regions ; text]``
  (regions first, no positions; MMT) or text only (NMT, image keys never read), every source token
  carries the *source* language's id (``lang2id`` = index in sorted(langs + ["img"]), so en->fr and
  en->de both work); padded text and padded region slots are excluded from the decoder's attention.
* The decoder has the seed's shape: LayerNorm eps 1e-12 everywhere, positions from 0, a language table
  whose target-language row is added to every target token, and a plain tied output projection
  (``pred_layer.proj``: no transform).
* :func:`init_decoder_from_xlm` is the seed's ``--init_dec_from_enc``: every decoder tensor from the
  checkpoint, ``encoder_attn.i`` := ``attentions.i`` and ``layer_norm15.i`` := ``layer_norm1.i``.
* :func:`decoder_state_to_seed` / :func:`decoder_state_from_seed` rename decoder tensors to and from the
  seed's MT-checkpoint ``decoder`` names (``attentions.i.q_lin``, ``encoder_attn.i``, ``layer_norm15.i``,
  ``ffns.i.lin1``, ``pred_layer.proj`` ...); the encoder already uses them.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from model.seq2seq import DecoderConfig, EncoderDecoder, EncoderOutput, SpecialIds, TransformerDecoder
from model.xlm import XlmConfig, XlmModel

_ATTENTION_NAMES = (("self.query", "q_lin"), ("self.key", "k_lin"), ("self.value", "v_lin"), ("output.dense", "out_lin"))


class XlmSourceEncoder(nn.Module):
    """An :class:`XlmModel` as translation encoder for source language ``src_lang``.

    ``src`` needs ``input_ids``/``position_ids`` (B, Lt); for MMT also ``img_feat`` (B, Ni, D),
    ``img_pos_feat`` (B, Ni, 7) and either ``img_valid`` (B, Ni) bool or the backbone's ``attn_masks``
    (regions counted from it). ``txt_mask`` (B, Lt) bool is taken from the batch when there, else from the
    padding id.
    """

    def __init__(self, xlm: XlmModel, use_images: bool, src_lang: str) -> None:
        super().__init__()
        if src_lang not in xlm.cfg.langs:
            raise ValueError(f"source language {src_lang!r} is not one of the model's langs {xlm.cfg.langs}")
        self.xlm = xlm
        self.use_images = use_images
        self.src_lang = src_lang

    def _txt_mask(self, src: dict[str, torch.Tensor]) -> torch.Tensor:
        return src["txt_mask"] if "txt_mask" in src else src["input_ids"] != self.xlm.cfg.pad_index

    def source_lengths(self, src: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) source text lengths including special tokens (regions not counted)."""
        return self._txt_mask(src).sum(1)

    def forward(self, src: dict[str, torch.Tensor]) -> EncoderOutput:
        """src batch -> EncoderOutput: states (B, [Ni +] Lt, d), keep (B, [Ni +] Lt) bool."""
        txt_mask = self._txt_mask(src)
        batch = {"input_ids": src["input_ids"], "position_ids": src["position_ids"], "txt_mask": txt_mask,
                 "side_ids": torch.where(txt_mask, 0, -1), "pair_langs": [(self.src_lang,)] * txt_mask.shape[0]}
        if self.use_images:
            missing = [k for k in ("img_feat", "img_pos_feat") if k not in src]
            if missing or ("img_valid" not in src and "attn_masks" not in src):
                raise KeyError(f"MMT source batch lacks {missing or ['img_valid or attn_masks']}")
            batch.update(img_feat=src["img_feat"], img_pos_feat=src["img_pos_feat"],
                         img_valid=src["img_valid"] if "img_valid" in src else _regions_valid(src, txt_mask))
        states, keep = self.xlm(batch, use_image=self.use_images)
        return EncoderOutput(states, keep)


def _regions_valid(src: dict[str, torch.Tensor], txt_mask: torch.Tensor) -> torch.Tensor:
    """(B, Ni) bool from the backbone packing: real regions = real packed positions - real text tokens."""
    n_regions = src["attn_masks"].sum(1) - txt_mask.sum(1)  # (B,)
    return torch.arange(src["img_feat"].shape[1], device=n_regions.device)[None, :] < n_regions[:, None]


def decoder_config_from_xlm(cfg: XlmConfig, tgt_lang: str) -> DecoderConfig:
    """The seed decoder's shape for target language ``tgt_lang``."""
    if tgt_lang not in cfg.langs:
        raise ValueError(f"target language {tgt_lang!r} is not one of the model's langs {cfg.langs}")
    return DecoderConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.dim, num_layers=cfg.n_layers,
                         num_heads=cfg.n_heads, intermediate_size=cfg.ffn_dim, hidden_act="gelu",
                         hidden_dropout=cfg.dropout, attention_dropout=cfg.attention_dropout, embedding_eps=1e-12,
                         layer_eps=1e-12, max_positions=cfg.max_positions, position_offset=0,
                         num_types=len(cfg.lang2id), type_id=cfg.lang2id[tgt_lang], output_transform=False,
                         initializer_range=cfg.dim ** -0.5)


def seed_decoder_names(num_layers: int) -> dict[str, str]:
    """Our decoder state-dict name -> the seed's MT-checkpoint ``decoder`` name, for every tensor."""
    names = {"embeddings.word_embeddings.weight": "embeddings.weight",
             "embeddings.position_embeddings.weight": "position_embeddings.weight",
             "embeddings.token_type_embeddings.weight": "lang_embeddings.weight",
             "output.weight": "pred_layer.proj.weight", "output.bias": "pred_layer.proj.bias"}
    for p in ("weight", "bias"):
        names[f"embeddings.LayerNorm.{p}"] = f"layer_norm_emb.{p}"
        for i in range(num_layers):
            for block, seed_attn, seed_norm in (("attention", "attentions", "layer_norm1"),
                                                ("crossattention", "encoder_attn", "layer_norm15")):
                for ours, seed in _ATTENTION_NAMES:
                    names[f"layer.{i}.{block}.{ours}.{p}"] = f"{seed_attn}.{i}.{seed}.{p}"
                names[f"layer.{i}.{block}.output.LayerNorm.{p}"] = f"{seed_norm}.{i}.{p}"
            names[f"layer.{i}.intermediate.dense.{p}"] = f"ffns.{i}.lin1.{p}"
            names[f"layer.{i}.output.dense.{p}"] = f"ffns.{i}.lin2.{p}"
            names[f"layer.{i}.output.LayerNorm.{p}"] = f"layer_norm2.{i}.{p}"
    return names


def decoder_state_to_seed(decoder: TransformerDecoder) -> dict[str, torch.Tensor]:
    """The decoder's tensors under the seed's names (fp32 CPU copies; the tied weight under both of its
    seed names, ``embeddings.weight`` and ``pred_layer.proj.weight``, as the seed saves it)."""
    names = seed_decoder_names(len(decoder.layer))
    return {names[k]: v.detach().to("cpu", torch.float32).clone() for k, v in decoder.state_dict().items()}


def decoder_state_from_seed(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Seed-named decoder tensors -> our names (for ``load_state_dict``); unknown or missing names raise."""
    names = seed_decoder_names(num_layers)
    expected = set(names.values())
    unexpected, missing = sorted(set(state) - expected), sorted(expected - set(state))
    if unexpected or missing:
        raise KeyError(f"seed decoder state: unexpected {unexpected[:8]}, missing {missing[:8]}")
    return {ours: state[seed] for ours, seed in names.items()}


def init_decoder_from_xlm(decoder: TransformerDecoder, pretrained: XlmModel) -> dict[str, str]:
    """``init_dec_from_enc``: copy ``pretrained``'s tensors into the decoder, cross-attention from the same
    layer's self-attention; returns {decoder tensor: checkpoint tensor} (seed names)."""
    if pretrained.cfg.n_layers != len(decoder.layer):
        raise ValueError(f"decoder has {len(decoder.layer)} layers, the encoder {pretrained.cfg.n_layers}")
    source = pretrained.state_dict()
    plan = {ours: seed.replace("encoder_attn.", "attentions.").replace("layer_norm15.", "layer_norm1.")
            for ours, seed in seed_decoder_names(len(decoder.layer)).items()}
    target = decoder.state_dict()
    with torch.no_grad():
        for ours, seed in plan.items():
            target[ours].copy_(source[seed])
    return plan


def build_from_xlm(pretrained: XlmModel, use_images: bool, src_lang: str, tgt_lang: str,
                   special: SpecialIds | None = None, init_dec_from_enc: bool = True) -> EncoderDecoder:
    """Encoder-decoder from an XLM-style model (a VTLM-C/TLM checkpoint, or fresh for the from-scratch
    recipe). The encoder is a deep copy of ``pretrained``; the decoder copies it (``init_dec_from_enc``) or,
    without, starts from an independent random draw of the seed's initialisation."""
    special = special or SpecialIds(bos=0, eos=2, pad=pretrained.cfg.pad_index)
    if special.pad != pretrained.cfg.pad_index:
        raise ValueError(f"pad id {special.pad} differs from the model's pad_index {pretrained.cfg.pad_index}")
    decoder = TransformerDecoder(decoder_config_from_xlm(pretrained.cfg, tgt_lang), special)
    if init_dec_from_enc:
        init_decoder_from_xlm(decoder, pretrained)
    else:
        init_decoder_from_xlm(decoder, XlmModel(pretrained.cfg))  # the seed's init, drawn afresh
        for layer in decoder.layer:  # the seed's decoder starts its cross-attention with default inits
            for module in layer.crossattention.modules():
                if isinstance(module, (nn.Linear, nn.LayerNorm)):
                    module.reset_parameters()
    encoder = XlmSourceEncoder(copy.deepcopy(pretrained), use_images, src_lang)
    return EncoderDecoder(encoder, decoder)
