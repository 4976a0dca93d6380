"""The UC2 single-stream transformer and its task models.

Module and parameter names follow the original checkpoint keys exactly (``roberta.embeddings...``,
``roberta.img_embeddings...``, ``roberta.encoder.layer.{i}...``, ``cls...``), so a released state dict
loads by name (see ``model/weights.py``).

Numerics that matter for reproducing the original outputs:
- encoder-layer LayerNorms use ``config.encoder_eps`` (1e-12 in the original, whatever
  ``layer_norm_eps`` said); embedding and MLM-head LayerNorms use ``layer_norm_eps``;
- text and image embeddings both add a row of the 2-row ``new_token_type_embeddings`` table
  (0 = text, 1 = image);
- padded key positions are excluded from attention; outputs at padded query positions are meaningless.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from model.config import UC2ModelConfig
from model.heads import (HEAD_ORDER, PRETRAIN_HEADS, FeatRegression, HeadFactory, MLMHead, activation, itm_head,
                         rank_head, vqa_head_factory)


class TextEmbeddings(nn.Module):
    """``roberta.embeddings``: LayerNorm(word + position + type) then dropout."""

    def __init__(self, config: UC2ModelConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, h, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, h,
                                                padding_idx=config.pad_token_id)
        self.new_token_type_embeddings = nn.Embedding(config.type_vocab_size, h)
        self.LayerNorm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def type_row(self, kind: int) -> torch.Tensor:
        """Row ``kind`` (0 = text, 1 = image) of the type table, (H,), the same for every token of that kind.

        A copy, not a view: a view of the weight taken with gradients off (evaluation, or ITC's detached
        passes) would still say requires_grad without having a grad_fn, and autograd hooks such as
        FlopCounterMode's module tracker refuse such a tensor when it is passed to a module. ``clone`` copies
        on the weight's device (no index tensor to build or send there on every forward).
        """
        return self.new_token_type_embeddings.weight[kind].clone()

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """input_ids, position_ids (B, Lt) -> text embeddings (B, Lt, H)."""
        emb = self.word_embeddings(input_ids) + self.position_embeddings(position_ids) + self.type_row(0)
        return self.dropout(self.LayerNorm(emb))


class ImageEmbeddings(nn.Module):
    """``roberta.img_embeddings``: LN( LN(img_linear(f)) + LN(pos_linear(p)) + type(1) ), dropout."""

    def __init__(self, config: UC2ModelConfig) -> None:
        super().__init__()
        h, eps = config.hidden_size, config.layer_norm_eps
        self.img_linear = nn.Linear(config.img_dim, h)
        self.img_layer_norm = nn.LayerNorm(h, eps=eps)
        self.pos_linear = nn.Linear(7, h)
        self.pos_layer_norm = nn.LayerNorm(h, eps=eps)
        # Row 0 stays zero (padding_idx keeps its gradient zero); row 1 marks a masked region.
        self.mask_embedding = nn.Embedding(2, config.img_dim, padding_idx=0)
        self.LayerNorm = nn.LayerNorm(h, eps=eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, img_feat: torch.Tensor, img_pos_feat: torch.Tensor, type_row: torch.Tensor,
                img_masks: torch.Tensor | None = None) -> torch.Tensor:
        """img_feat (B, Ni, D), img_pos_feat (B, Ni, 7), type_row (H,), img_masks (B, Ni) bool or None
        -> region embeddings (B, Ni, H)."""
        if img_masks is not None:
            masked = img_masks.bool().unsqueeze(-1)  # (B, Ni, 1)
            # Zero the masked features here too, so a caller that forgot cannot leak the target.
            img_feat = img_feat.masked_fill(masked, 0.0) + masked * self.mask_embedding.weight[1]
        feat = self.img_layer_norm(self.img_linear(img_feat))
        pos = self.pos_layer_norm(self.pos_linear(img_pos_feat))
        return self.dropout(self.LayerNorm(feat + pos + type_row))


class SelfAttention(nn.Module):
    """``attention.self``: query/key/value projections and scaled dot-product attention."""

    def __init__(self, config: UC2ModelConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """hidden (B, L, H), keep (B, 1, 1, L) bool (True = may be attended) -> context (B, L, H)."""
        b, length, h = hidden.shape
        # One (H -> 3H) projection instead of three (H -> H): the wider GEMMs (forward and backward) run
        # closer to the matmul peak (scripts/benchmark.py measured ~7 % off an encoder step on CPU).
        # The 3H x H concatenation is a small copy per layer; the parameters keep their checkpoint names.
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])  # (3H, H)
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])  # (3H,)
        qkv = F.linear(hidden, weight, bias)  # (B, L, 3H)
        # (B, L, 3, heads, H / heads) -> 3 x (B, heads, L, H / heads)
        q, k, v = qkv.view(b, length, 3, self.num_heads, h // self.num_heads).permute(2, 0, 3, 1, 4)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                             dropout_p=self.dropout_p if self.training else 0.0)
        return ctx.transpose(1, 2).reshape(b, length, h)


class DenseResidualNorm(nn.Module):
    """``attention.output`` / ``output``: LayerNorm(dropout(dense(x)) + residual) (post-LN)."""

    def __init__(self, in_size: int, config: UC2ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(in_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.encoder_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """x (B, L, in_size), residual (B, L, H) -> (B, L, H)."""
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    """``encoder.layer.{i}.attention`` = ``self`` + ``output``."""

    def __init__(self, config: UC2ModelConfig) -> None:
        super().__init__()
        self.self = SelfAttention(config)
        self.output = DenseResidualNorm(config.hidden_size, config)

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """hidden (B, L, H) -> (B, L, H)."""
        return self.output(self.self(hidden, keep), hidden)


class Intermediate(nn.Module):
    """``encoder.layer.{i}.intermediate``: act(dense(x)), H -> intermediate_size."""

    def __init__(self, config: UC2ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, L, H) -> (B, L, intermediate_size)."""
        return self.act(self.dense(hidden))


class EncoderLayer(nn.Module):
    """One post-LN transformer layer (BERT layout)."""

    def __init__(self, config: UC2ModelConfig) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = DenseResidualNorm(config.intermediate_size, config)

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """hidden (B, L, H), keep (B, 1, 1, L) bool -> (B, L, H)."""
        attended = self.attention(hidden, keep)
        return self.output(self.intermediate(attended), attended)


class Encoder(nn.Module):
    """``roberta.encoder``: ``layer`` = ModuleList of EncoderLayer."""

    def __init__(self, config: UC2ModelConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden: torch.Tensor, attn_masks: torch.Tensor) -> torch.Tensor:
        """hidden (B, L, H), attn_masks (B, L) with 1 on real positions -> last hidden states (B, L, H)."""
        keep = attn_masks.bool()[:, None, None, :]  # broadcast over heads and query positions
        for layer in self.layer:
            hidden = layer(hidden, keep)
        return hidden


class Pooler(nn.Module):
    """``roberta.pooler``: tanh(dense(hidden of token 0))."""

    def __init__(self, config: UC2ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        """sequence (B, L, H) -> pooled (B, H)."""
        return torch.tanh(self.dense(sequence[:, 0]))


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT initialisation: Linear/Embedding weights ~ N(0, std), biases 0, LayerNorm 1/0.

    Embedding padding rows (word/position pad, mask_embedding row 0) are set back to zero.
    """
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Embedding)):
            nn.init.normal_(sub.weight, mean=0.0, std=std)
        if isinstance(sub, nn.Linear) and sub.bias is not None:
            nn.init.zeros_(sub.bias)
        if isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
    # A second pass: tied Linears (the MLM decoder) re-drew the embedding rows in the first one.
    for sub in module.modules():
        if isinstance(sub, nn.Embedding) and sub.padding_idx is not None:
            with torch.no_grad():
                sub.weight[sub.padding_idx].zero_()
        if isinstance(sub, (MLMHead, FeatRegression)):  # bare bias Parameters (cls.bias, feat_regress.bias)
            nn.init.zeros_(sub.bias)


class UC2Model(nn.Module):
    """Backbone (``roberta``): text + region embeddings, packed per example, then the encoder."""

    def __init__(self, config: UC2ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = TextEmbeddings(config)
        self.img_embeddings = ImageEmbeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config)

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
              img_feat: torch.Tensor | None = None, img_pos_feat: torch.Tensor | None = None,
              gather_index: torch.Tensor | None = None,
              img_masks: torch.Tensor | None = None) -> torch.Tensor:
        """Packed input embeddings (B, L, H); without regions, the text embeddings (B, Lt, H).

        gather_index (B, L) indexes cat([text (Lt), regions (Ni)]) per example, so each example is
        its text, then its regions, then padding.
        """
        txt = self.embeddings(input_ids, position_ids)  # (B, Lt, H)
        if img_feat is None:
            return txt if gather_index is None else _gather(txt, gather_index)
        if img_pos_feat is None:
            raise ValueError("img_pos_feat (B, Ni, 7) is required when img_feat is given")
        img = self.img_embeddings(img_feat, img_pos_feat, self.embeddings.type_row(1), img_masks)  # (B, Ni, H)
        both = torch.cat([txt, img], dim=1)  # (B, Lt + Ni, H)
        return both if gather_index is None else _gather(both, gather_index)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                img_feat: torch.Tensor | None = None, img_pos_feat: torch.Tensor | None = None,
                attn_masks: torch.Tensor | None = None, gather_index: torch.Tensor | None = None,
                img_masks: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids, position_ids (B, Lt); img_feat (B, Ni, D); img_pos_feat (B, Ni, 7);
        attn_masks (B, L) 1 = real; gather_index (B, L); img_masks (B, Ni) bool
        -> last-layer hidden states (B, L, H)."""
        emb = self.embed(input_ids, position_ids, img_feat, img_pos_feat, gather_index, img_masks)
        if attn_masks is None:
            attn_masks = torch.ones(emb.shape[:2], dtype=torch.long, device=emb.device)
        if attn_masks.shape != emb.shape[:2]:
            raise ValueError(f"attn_masks has shape {tuple(attn_masks.shape)}, expected {tuple(emb.shape[:2])}")
        return self.encoder(emb, attn_masks)


def _gather(emb: torch.Tensor, gather_index: torch.Tensor) -> torch.Tensor:
    """emb (B, Lt + Ni, H), gather_index (B, L) -> (B, L, H)."""
    return torch.gather(emb, 1, gather_index.unsqueeze(-1).expand(-1, -1, emb.shape[-1]))


def gather_positions(sequence: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden states at the True positions of ``mask``: sequence (B, L, H), mask (B, L) -> (N, H)."""
    return sequence[mask.bool()]


class UC2WithHeads(nn.Module):
    """One backbone ``roberta`` plus the heads a run's tasks declared, each a child module named by its
    checkpoint key (``cls``, ``itm_output``, ``rank_output``, ``vqa_output``, ...).

    The heads are direct children rather than an ``nn.ModuleDict`` attribute so that the state-dict keys
    stay those of the released checkpoints (``cls.dense.weight``, not ``heads.cls.dense.weight``);
    :attr:`heads` gives the dict view. Heads are built in :data:`model.heads.HEAD_ORDER`, then any other
    head in the order given, and everything is then initialised once (BERT init), so the model and its
    random draws are the same whatever the order of the run's tasks.

    Args:
        config: the backbone shape.
        heads: checkpoint key -> factory ``(config, backbone) -> nn.Module``.
        fresh: heads this run trains and may start from scratch: weight loading accepts them missing
            from a checkpoint (e.g. ``rank_output``, ``vqa_output``); any other missing key is reported.
    """

    def __init__(self, config: UC2ModelConfig, heads: Mapping[str, HeadFactory],
                 fresh: Iterable[str] = ()) -> None:
        super().__init__()
        self.config = config
        self.roberta = UC2Model(config)
        ordered = [n for n in HEAD_ORDER if n in heads] + [n for n in heads if n not in HEAD_ORDER]
        for name in ordered:
            if name == "roberta" or not name.isidentifier():
                raise ValueError(f"head name {name!r}: expected a Python identifier other than 'roberta'")
            self.add_module(name, heads[name](config, self.roberta))
        self.head_names: tuple[str, ...] = tuple(ordered)
        self.fresh_heads: frozenset[str] = frozenset(fresh)
        init_bert_weights(self, config.initializer_range)
        for name in ordered:  # a head with its own init rule (model.itc.ItcHead) applies it after BERT's
            if callable(getattr(getattr(self, name), "post_init", None)):
                getattr(self, name).post_init()

    @property
    def heads(self) -> dict[str, nn.Module]:
        """Head modules by checkpoint key."""
        return {name: getattr(self, name) for name in self.head_names}

    def forward(self, *args, **kwargs) -> torch.Tensor:
        """Same arguments as :meth:`UC2Model.forward` -> sequence output (B, L, H)."""
        return self.roberta(*args, **kwargs)


class UC2ForPretraining(UC2WithHeads):
    """Backbone + pretraining heads: ``cls`` (MLM/MRTM/VTLM), ``itm_output``, ``region_classifier``
    (MRC), ``feat_regress`` (MRFR), as in the released checkpoint; ``extra_heads`` (declared by new
    objectives) come after them. Heads take gathered hidden states (N, H)."""

    def __init__(self, config: UC2ModelConfig, extra_heads: Mapping[str, HeadFactory] | None = None,
                 fresh: Iterable[str] = ()) -> None:
        super().__init__(config, {**PRETRAIN_HEADS, **(extra_heads or {})}, fresh)

    def itm_logits(self, sequence: torch.Tensor) -> torch.Tensor:
        """sequence (B, L, H) -> image-text match logits (B, 2) (column 1 = match)."""
        return self.itm_output(self.roberta.pooler(sequence))


class UC2ForImageTextRetrieval(UC2WithHeads):
    """Backbone + ``itm_output`` Linear(H, 2) + ``rank_output`` Linear(H, 1) (retrieval score), plus
    ``extra_heads`` (e.g. the shortlist head ``itc`` of a fine-tune that mixed in the ITC task)."""

    def __init__(self, config: UC2ModelConfig, extra_heads: Mapping[str, HeadFactory] | None = None) -> None:
        super().__init__(config, {"itm_output": itm_head, "rank_output": rank_head, **(extra_heads or {})},
                         fresh=("rank_output",))

    def forward(self, *args, **kwargs) -> torch.Tensor:
        """Same arguments as :meth:`UC2Model.forward` -> rank logits (B,); sigmoid gives the score."""
        return self.rank_output(self.roberta.pooler(self.roberta(*args, **kwargs))).squeeze(-1)


class UC2ForVQA(UC2WithHeads):
    """Backbone + ``vqa_output`` (Linear(H,2H), GELU, LayerNorm(2H), Linear(2H, num_answers))."""

    def __init__(self, config: UC2ModelConfig, num_answers: int) -> None:
        super().__init__(config, {"vqa_output": vqa_head_factory(num_answers)}, fresh=("vqa_output",))

    def forward(self, *args, **kwargs) -> torch.Tensor:
        """Same arguments as :meth:`UC2Model.forward` -> answer logits (B, num_answers)."""
        return self.vqa_output(self.roberta.pooler(self.roberta(*args, **kwargs)))
