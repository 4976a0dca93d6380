"""CLIP-style dual encoder: a causal text tower and an image tower (ViT over pixels, or regions), 512-d joint space.

Parameter names follow the OpenAI / open_clip state dict under two prefixes: ``text.`` for the text tower
(``text.token_embedding.weight``, ``text.transformer.resblocks.0.attn.in_proj_weight``, ``text.ln_final``,
``text.text_projection`` ...) and ``visual.`` for the image tower, plus ``logit_scale``. So an OpenAI
checkpoint loads through one prefix rule (:mod:`model.clip_weights`), and Hugging Face ``CLIPModel``
weights through one explicit rename table.

Text features are pooled at an EXPLICIT end-of-text position (the first ``eos_id`` of each row), after
``ln_final``, then ``@ text_projection``. OpenAI's ``argmax(ids)`` works only for CLIP's BPE, where EOT is the
largest id; the position rule works for any tokenizer (``</s>`` = 2 in the XLM-R layout).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Activation = Literal["quick_gelu", "gelu"]


@dataclass
class TowerConfig:
    """One transformer stack: ``layers`` pre-LN blocks of width ``width`` with ``heads`` heads."""

    width: int = 512
    layers: int = 12
    heads: int = 8
    ffn: int = 2048
    act: Activation = "quick_gelu"
    """"quick_gelu" (x * sigmoid(1.702 x), OpenAI weights) or "gelu" (exact erf GELU)."""
    ln_eps: float = 1e-5


@dataclass
class TextConfig(TowerConfig):
    """Causal text tower; ``eos_id`` marks the pooled position (49407 for CLIP BPE, 2 for XLM-R layout)."""

    vocab_size: int = 49408
    context_length: int = 77
    eos_id: int = 49407


@dataclass
class VisionConfig(TowerConfig):
    """Image tower. ``kind="vit"``: pixels, ``image_size``/``patch_size``. ``kind="region"``: detector
    regions of ``feat_dim`` features plus 7-d boxes (the project's img_db)."""

    kind: Literal["vit", "region"] = "vit"
    image_size: int = 224
    patch_size: int = 32
    feat_dim: int = 2048
    width: int = 768
    heads: int = 12
    ffn: int = 3072


@dataclass
class DualEncoderConfig:
    """The whole dual encoder; ``embed_dim`` is the joint space, ``logit_scale_init`` = log(1/τ)."""

    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    embed_dim: int = 512
    logit_scale_init: float = math.log(1 / 0.07)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "DualEncoderConfig":
        """From :meth:`to_dict` output; unknown keys raise ``TypeError`` naming them (dataclass init)."""
        raw = dict(raw)
        text = TextConfig(**raw.pop("text", {}))
        vision = VisionConfig(**raw.pop("vision", {}))
        return cls(text=text, vision=vision, **raw)


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation ``x * sigmoid(1.702 x)``."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"activation: expected 'quick_gelu' or 'gelu', got {name!r}")


class Attention(nn.Module):
    """Multi-head self-attention with OpenAI's packed ``in_proj_weight`` (3W, W) and ``out_proj``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"attention: width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x (B, L, W); mask (L, L) or (B, 1, L, L) additive float, or None. Returns (B, L, W)."""
        b, n, w = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)          # (B, L, 3W)
        q, k, v = qkv.view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)  # each (B, h, L, d)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)       # (B, h, L, d)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, w))


class MLP(nn.Module):
    def __init__(self, width: int, ffn: int, act: str):
        super().__init__()
        self.c_fc = nn.Linear(width, ffn)
        self.act = activation(act)
        self.c_proj = nn.Linear(ffn, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class ResidualBlock(nn.Module):
    """Pre-LN block: ``x += attn(ln_1(x)); x += mlp(ln_2(x))`` (no dropout)."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.attn = Attention(cfg.width, cfg.heads)
        self.ln_2 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.mlp = MLP(cfg.width, cfg.ffn, cfg.act)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualBlock(cfg) for _ in range(cfg.layers))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


def causal_mask(n: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """(n, n) additive mask: 0 on and below the diagonal, -inf above (a token sees only its past)."""
    return torch.full((n, n), float("-inf"), device=device, dtype=dtype).triu_(1)


def eos_positions(input_ids: Tensor, eos_id: int) -> Tensor:
    """(B,) index of the FIRST ``eos_id`` in each row of ``input_ids`` (B, L).

    Raises:
        ValueError: a row has no end-of-text token (it was truncated without keeping EOS last).
    """
    is_eos = input_ids == eos_id
    missing = ~is_eos.any(dim=1)
    if missing.any():
        row = int(missing.nonzero()[0])
        raise ValueError(f"text ids: row {row} has no end-of-text id {eos_id}; truncate so that EOS stays last")
    return is_eos.int().argmax(dim=1)


class TextTower(nn.Module):
    """Causal transformer over token ids, pooled at the end-of-text position.

    Split into :meth:`embed`, :meth:`blocks` (one call per block) and :meth:`pool` so that the language
    acquirers (model/mla.py) run the same modules with their own embedding and inter-block hooks.
    """

    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg)
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=cfg.width ** -0.5)

    def add_positions(self, tok: Tensor) -> Tensor:
        """(B, L, W) token embeddings + the (frozen, shared) positions; L <= context_length."""
        if tok.size(1) > self.cfg.context_length:
            raise ValueError(f"text: {tok.size(1)} tokens, the tower has {self.cfg.context_length} positions")
        return tok + self.positional_embedding[: tok.size(1)]

    def pool(self, x: Tensor, eos_pos: Tensor) -> Tensor:
        """(B, L, W) final states -> (B, E): ``ln_final`` at ``eos_pos`` (B,), then the projection."""
        x = self.ln_final(x)
        return x[torch.arange(x.size(0), device=x.device), eos_pos] @ self.text_projection

    def forward(self, input_ids: Tensor) -> Tensor:
        """input_ids (B, L) long -> (B, E) unnormalised text features."""
        x = self.add_positions(self.token_embedding(input_ids))               # (B, L, W)
        x = self.transformer(x, causal_mask(x.size(1), x.device, x.dtype))
        return self.pool(x, eos_positions(input_ids, self.cfg.eos_id))


class VisionTransformer(nn.Module):
    """ViT over pixels (OpenAI ``visual``): conv patches + CLS + positions, ``ln_pre``, blocks, ``ln_post`` on
    CLS, ``proj``."""

    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        n_patches = (cfg.image_size // cfg.patch_size) ** 2
        scale = cfg.width ** -0.5
        self.conv1 = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(cfg.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(n_patches + 1, cfg.width))
        self.ln_pre = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.transformer = Transformer(cfg)
        self.ln_post = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.proj = nn.Parameter(scale * torch.randn(cfg.width, embed_dim))

    def forward(self, pixels: Tensor) -> Tensor:
        """pixels (B, 3, H, W) normalised -> (B, E)."""
        x = self.conv1(pixels).flatten(2).transpose(1, 2)                    # (B, N, W)
        cls = self.class_embedding.expand(x.size(0), 1, -1)
        x = torch.cat([cls.to(x.dtype), x], dim=1) + self.positional_embedding  # (B, N+1, W)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class RegionTransformer(nn.Module):
    """Image tower over detector regions: (features, 7-d box) -> Linear each, summed, + CLS, ``ln_pre``,
    blocks with a padding mask, ``ln_post`` on CLS, ``proj``."""

    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        scale = cfg.width ** -0.5
        self.feat_linear = nn.Linear(cfg.feat_dim, cfg.width)
        self.box_linear = nn.Linear(7, cfg.width)
        self.class_embedding = nn.Parameter(scale * torch.randn(cfg.width))
        self.ln_pre = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.transformer = Transformer(cfg)
        self.ln_post = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.proj = nn.Parameter(scale * torch.randn(cfg.width, embed_dim))

    def forward(self, img_feat: Tensor, img_pos_feat: Tensor, img_mask: Tensor | None = None) -> Tensor:
        """img_feat (B, N, D), img_pos_feat (B, N, 7), img_mask (B, N) bool (True = real region) -> (B, E)."""
        x = self.feat_linear(img_feat) + self.box_linear(img_pos_feat)      # (B, N, W)
        x = torch.cat([self.class_embedding.expand(x.size(0), 1, -1).to(x.dtype), x], dim=1)
        mask = None
        if img_mask is not None:
            keep = torch.cat([img_mask.new_ones(img_mask.size(0), 1), img_mask.bool()], dim=1)  # (B, N+1)
            mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(~keep, float("-inf"))
            mask = mask[:, None, None, :]                                     # (B, 1, 1, N+1) keys only
        x = self.transformer(self.ln_pre(x), mask)
        return self.ln_post(x[:, 0]) @ self.proj


class DualEncoder(nn.Module):
    """``text`` tower, ``visual`` tower and ``logit_scale`` (log of the inverse temperature)."""

    def __init__(self, cfg: DualEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.text = TextTower(cfg.text, cfg.embed_dim)
        tower = {"vit": VisionTransformer, "region": RegionTransformer}.get(cfg.vision.kind)
        if tower is None:
            raise ValueError(f"vision.kind: expected 'vit' or 'region', got {cfg.vision.kind!r}")
        self.visual = tower(cfg.vision, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))

    def encode_text(self, input_ids: Tensor, lang: str | None = None) -> Tensor:
        """(B, L) ids -> (B, E) unnormalised. ``lang`` is accepted for the acquisition model's interface: the
        native model reads every language with its own embedding (the "no acquisition" baseline)."""
        return self.text(input_ids)

    def encode_image(self, *inputs: Tensor) -> Tensor:
        """Pixels (B, 3, H, W) for a ViT; ``(img_feat, img_pos_feat, img_mask)`` for regions. -> (B, E)."""
        return self.visual(*inputs)


def clip_contrastive_loss(img: Tensor, txt: Tensor, scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE over in-batch negatives: ½[CE(s·cos(V,T)) + CE(s·cos(V,T)ᵀ)], diagonal targets.

    img, txt (B, E) unnormalised (L2-normalised here, eps 1e-6 as in MLA's code); ``scale`` = 1/τ.
    """
    v = F.normalize(img, dim=-1, eps=1e-6)
    t = F.normalize(txt, dim=-1, eps=1e-6)
    logits = scale * v @ t.t()                                                 # (B, B) image rows
    target = torch.arange(logits.size(0), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
