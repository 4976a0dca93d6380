"""The VTLM seed's model as a configuration: an XLM-style post-LN transformer over ``[regions ; text]``.

Facts followed (``MMT_FACTS.md`` §2): language embeddings; learned positions for text only; regions first,
each ``ReLU(projector(feat)) + ReLU(regional_encodings(box)) + lang_emb[img]`` (optional LayerNorm,
own dropout); layers ``x = LN1(x + drop(attn(x))); x = LN2(x + drop(ffn(x))); x *= mask``; LayerNorm eps
1e-12; no embedding scaling; token/position tables N(0, d^-0.5) with a zero pad row; output layer
``pred_layer.proj`` tied to the input embedding; MRC head ``img_pred_layer.proj``. Parameter names are
the seed's (``embeddings``, ``attentions.0.q_lin`` ...), so a state dict maps one to one.

Where the project differs from the seed (on purpose): feature width, box width, region count and class
count come from the config (the seed hard-codes 1536, 4, 36, 601); the batch carries XLM-R style
positions (first token 2, padding 1, see data/collate.py), shifted here by ``first_position``; the
language of every token is named in the batch (``side_ids`` + ``pair_langs``) and mapped to ids by the
model, whose ``langs`` fix the table (ids = index in sorted(langs + ["img"])), so any direction works.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import ConfigError

IMG_LANG = "img"
LN_EPS = 1e-12


@dataclass
class XlmConfig:
    """Shape of the XLM-style (VTLM seed) transformer; defaults are the seed's base model."""

    vocab_size: int = 49209
    """Token ids (the seed: 49,195 BPE entries + 14 specials)."""
    dim: int = 512
    """Hidden width d."""
    n_layers: int = 6
    """Transformer layers."""
    n_heads: int = 8
    """Attention heads (must divide dim)."""
    ffn_dim: int = 2048
    """Feed-forward width (4d in the seed)."""
    dropout: float = 0.1
    """Dropout on embeddings, residual branches and the FFN output."""
    attention_dropout: float = 0.1
    """Dropout on attention weights."""
    max_positions: int = 512
    """Rows of the position table (text only; regions have no position)."""
    langs: list[str] = field(default_factory=lambda: ["de", "en"])
    """Text languages; the language table is sorted(langs + ["img"])."""
    pad_index: int = 1
    """Id of the padding token (its embedding row is zero)."""
    mask_index: int = 4
    """Id of the [MASK] token (used to overwrite masked regions when region_mask_type is "mask")."""
    first_position: int = 2
    """Batch position id of the first token (XLM-R convention: 2); subtracted before the table."""
    img_dim: int = 1536
    """Region feature width (1536 for the seed's OID detector, 2048 for BUTD, 64 in the demo)."""
    box_dim: int = 4
    """Box width: 4 = [ymin, xmin, ymax, xmax] (the seed), 7 = the project's [x1,y1,x2,y2,w,h,w*h]."""
    num_classes: int = 601
    """Detector classes predicted by the MRC head (601 for Open Images v4)."""
    reg_enc_bias: bool = True
    """Bias of the box projection (the seed: true in pretraining, false in MMT fine-tuning)."""
    visual_lnorm: bool = False
    """LayerNorm on the region embeddings."""
    visual_dropout: float = 0.1
    """Dropout on the region embeddings."""
    region_mask_type: Literal["mask", "zero"] = "mask"
    """Masked region: "mask" = projected feature replaced by the [MASK] embedding; "zero" = zero feature."""

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ConfigError(f"xlm model: dim ({self.dim}) must be a multiple of n_heads ({self.n_heads})")
        if self.box_dim not in (4, 7):
            raise ConfigError(f"xlm model: box_dim must be 4 or 7, got {self.box_dim}")
        if self.region_mask_type not in ("mask", "zero"):
            raise ConfigError(f"xlm model: region_mask_type must be 'mask' or 'zero', got {self.region_mask_type!r}")
        if IMG_LANG in self.langs or len(set(self.langs)) != len(self.langs):
            raise ConfigError(f"xlm model: langs must be distinct text languages, got {self.langs}")

    @property
    def lang2id(self) -> dict[str, int]:
        """Language -> id: index in sorted(langs + ["img"]) (en-de: de 0, en 1, img 2)."""
        return {lang: i for i, lang in enumerate(sorted([*self.langs, IMG_LANG]))}

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": "xlm", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "<dict>") -> "XlmConfig":
        """Build from a mapping; unknown keys are an error naming ``source`` and the known keys."""
        values = {k: v for k, v in values.items() if k != "architecture"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown xlm model config key(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> "XlmConfig":
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read xlm model config JSON ({exc})") from exc
        return cls.from_dict(values, source=str(path))


def is_xlm_config_file(path: str | Path) -> bool:
    """Whether a model config JSON names ``"architecture": "xlm"`` (else it is a UC2/XLM-R config)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")).get("architecture") == "xlm"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


class MultiHeadAttention(nn.Module):
    """XLM's attention: ``q_lin``, ``k_lin``, ``v_lin``, ``out_lin``; dropout on the weights."""

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.q_lin, self.k_lin, self.v_lin, self.out_lin = (nn.Linear(dim, dim) for _ in range(4))

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, d) -> (B, heads, L, d / heads)."""
        b, n, d = x.shape
        return x.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x (B, Lq, d) attends over keys (B, Lk, d); key_mask (B, Lk) bool, True = real -> (B, Lq, d)."""
        q, k, v = self.split(self.q_lin(x)), self.split(self.k_lin(keys)), self.split(self.v_lin(keys))
        mask = key_mask[:, None, None, :]  # (B, 1, 1, Lk)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_lin(out.transpose(1, 2).reshape(x.shape))


class TransformerFFN(nn.Module):
    """``lin2(gelu(lin1(x)))`` with dropout on the output."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.lin2(F.gelu(self.lin1(x))), self.dropout, self.training)


def _named_linear(in_dim: int, out_dim: int, attr: str, bias: bool = True) -> nn.Module:
    """A holder module with one Linear under ``attr`` (so keys read ``projector.linear.weight``)."""
    holder = nn.Module()
    setattr(holder, attr, nn.Linear(in_dim, out_dim, bias=bias))
    return holder


def seed_boxes(img_pos_feat: torch.Tensor, box_dim: int) -> torch.Tensor:
    """(B, Ni, 7) [x1,y1,x2,y2,w,h,wh] -> (B, Ni, box_dim); 4 = the seed's [ymin, xmin, ymax, xmax]."""
    return img_pos_feat if box_dim == 7 else img_pos_feat[..., [1, 0, 3, 2]]


class XlmModel(nn.Module):
    """The seed's TransformerModel (encoder) with region input, token and region heads.

    Key names match the seed's checkpoints (``model`` dict of a pretraining checkpoint, and ``encoder``
    of an MT one, whose ``img_pred_layer`` is simply unused).
    """

    @property
    def config(self) -> XlmConfig:
        """The model's config (``cfg``), under the name the UC2 models use."""
        return self.cfg

    def __init__(self, cfg: XlmConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.embeddings = nn.Embedding(cfg.vocab_size, d, padding_idx=cfg.pad_index)
        self.position_embeddings = nn.Embedding(cfg.max_positions, d)
        self.lang_embeddings = nn.Embedding(len(cfg.lang2id), d)
        self.layer_norm_emb = nn.LayerNorm(d, eps=LN_EPS)
        self.attentions = nn.ModuleList(MultiHeadAttention(d, cfg.n_heads, cfg.attention_dropout)
                                        for _ in range(cfg.n_layers))
        self.layer_norm1 = nn.ModuleList(nn.LayerNorm(d, eps=LN_EPS) for _ in range(cfg.n_layers))
        self.ffns = nn.ModuleList(TransformerFFN(d, cfg.ffn_dim, cfg.dropout) for _ in range(cfg.n_layers))
        self.layer_norm2 = nn.ModuleList(nn.LayerNorm(d, eps=LN_EPS) for _ in range(cfg.n_layers))
        self.projector = _named_linear(cfg.img_dim, d, "linear")
        self.regional_encodings = _named_linear(cfg.box_dim, d, "linear", bias=cfg.reg_enc_bias)
        self.visual_layer_norm = nn.LayerNorm(d, eps=LN_EPS) if cfg.visual_lnorm else None
        self.pred_layer = _named_linear(d, cfg.vocab_size, "proj")
        self.pred_layer.proj.weight = self.embeddings.weight  # tied, as the seed
        self.img_pred_layer = _named_linear(d, cfg.num_classes, "proj")
        for table in (self.embeddings, self.position_embeddings, self.lang_embeddings):
            nn.init.normal_(table.weight, 0.0, d ** -0.5)
        with torch.no_grad():
            self.embeddings.weight[cfg.pad_index].zero_()

    def lang_ids(self, side_ids: torch.Tensor, pair_langs: list[tuple[str, ...]]) -> torch.Tensor:
        """side_ids (B, Lt) long (0 = first side, 1 = second, -1 = pad) -> language ids (B, Lt)."""
        table = self.cfg.lang2id
        try:
            rows = [[table[lang] for lang in langs] for langs in pair_langs]
        except KeyError as err:
            raise ConfigError(f"xlm model: language {err.args[0]!r} not in the model's langs {self.cfg.langs}") from None
        width = max(len(r) for r in rows)
        per_side = torch.tensor([r + r[-1:] * (width - len(r)) for r in rows], device=side_ids.device)
        return per_side.gather(1, side_ids.clamp(min=0))

    def embed_text(self, input_ids, position_ids, lang_ids, txt_mask) -> torch.Tensor:
        """(B, Lt) ids/positions/langs, txt_mask (B, Lt) bool -> (B, Lt, d): LN(tok + pos + lang), drop, *mask."""
        positions = (position_ids - self.cfg.first_position).clamp(min=0)
        emb = self.embeddings(input_ids) + self.position_embeddings(positions) + self.lang_embeddings(lang_ids)
        emb = F.dropout(self.layer_norm_emb(emb), self.cfg.dropout, self.training)
        return emb * txt_mask[..., None].to(emb.dtype)

    def embed_regions(self, img_feat, img_pos_feat, region_masked=None) -> torch.Tensor:
        """img_feat (B, Ni, D), img_pos_feat (B, Ni, 7), region_masked (B, Ni) bool or None -> (B, Ni, d):
        ReLU(projector(feat)) [masked: the [MASK] embedding] + ReLU(box projection) + lang(img)."""
        cfg = self.cfg
        if region_masked is not None:  # the feature of a masked region never reaches the model
            img_feat = img_feat.masked_fill(region_masked[..., None], 0.0)
        feat = F.relu(self.projector.linear(img_feat))
        if region_masked is not None and cfg.region_mask_type == "mask":
            feat = torch.where(region_masked[..., None], self.embeddings.weight[cfg.mask_index], feat)
        box = F.relu(self.regional_encodings.linear(seed_boxes(img_pos_feat, cfg.box_dim)))
        emb = feat + box + self.lang_embeddings.weight[cfg.lang2id[IMG_LANG]]
        if self.visual_layer_norm is not None:
            emb = self.visual_layer_norm(emb)
        return F.dropout(emb, cfg.visual_dropout, self.training)

    def layers(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Post-LN layers over x (B, L, d) with mask (B, L) bool."""
        keep = mask[..., None].to(x.dtype)
        for attn, ln1, ffn, ln2 in zip(self.attentions, self.layer_norm1, self.ffns, self.layer_norm2):
            x = ln1(x + F.dropout(attn(x, x, mask), self.cfg.dropout, self.training))
            x = ln2(x + ffn(x)) * keep
        return x

    def forward(self, batch: dict, region_masked: torch.Tensor | None = None, use_image: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``[regions ; text]`` of a batch (keys: see :func:`encoder_inputs`).

        Returns hidden (B, Ni + Lt, d) (Ni = 0 without image) and its mask (B, Ni + Lt) bool.
        """
        txt_mask = batch["txt_mask"]
        lang_ids = self.lang_ids(batch["side_ids"], batch["pair_langs"])
        x = self.embed_text(batch["input_ids"], batch["position_ids"], lang_ids, txt_mask)
        mask = txt_mask
        if use_image and "img_feat" in batch:
            regions = self.embed_regions(batch["img_feat"], batch["img_pos_feat"], region_masked)
            x, mask = torch.cat([regions, x], 1), torch.cat([batch["img_valid"], txt_mask], 1)
        return self.layers(x, mask), mask


def resolve_xlm_config(path: str | Path, *, vocab_size: int, pad_index: int, mask_index: int, img_dim: int,
                       num_classes: int | None, dropout: float) -> XlmConfig:
    """The run's XLM config: shape from the JSON file, ids from the tokenizer, widths from the img_db."""
    values = XlmConfig.from_json(path).to_dict()
    values.update(vocab_size=vocab_size, pad_index=pad_index, mask_index=mask_index, img_dim=img_dim,
                  dropout=dropout)
    if num_classes:
        values["num_classes"] = num_classes
    return XlmConfig.from_dict(values, source=str(path))


def xlm_state_from_file(path: str | Path, part: str = "model") -> dict[str, torch.Tensor]:
    """A flat state dict from ``path`` (weights_only): ours (flat) or a dict holding it under ``part``
    (the seed's layout: ``model`` for pretraining, ``encoder``/``decoder`` for MT; fixtures written by us)."""
    from model.weights import check_state_dict
    from utils.checkpoint import load_torch_file

    state = load_torch_file(path)
    if isinstance(state, dict) and isinstance(state.get(part), dict):
        state = state[part]
    return check_state_dict(state, f"{path} [{part}]")


def load_xlm_checkpoint(model: nn.Module, path: str | Path, part: str = "model",
                        allow_missing: tuple[str, ...] = ()) -> None:
    """Load by name, strictly: an unexpected or missing key is an error naming the file and the keys.

    The seed loaded with strict=False and silently dropped ``regional_encodings.linear.bias`` when
    ``reg_enc_bias`` differed (MMT_FACTS §10.2); here only keys starting with ``allow_missing`` may be absent.
    """
    from utils.checkpoint import CheckpointError

    state = xlm_state_from_file(path, part)
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(allow_missing))
    bad_shape = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    if unexpected or missing or bad_shape:
        raise CheckpointError(f"{path}: does not fit the model: unexpected keys {unexpected[:8]}, missing keys "
                              f"{missing[:8]}, shape mismatches {bad_shape[:8]} (check reg_enc_bias, dims, langs)")
    model.load_state_dict(state, strict=False)


def save_xlm_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Write the flat fp32 state dict (seed key names) atomically."""
    from utils.atomic import atomic_torch_save
    from utils.checkpoint import fp32_state_dict

    path = Path(path)
    atomic_torch_save(fp32_state_dict(model.state_dict()), path)
    return path
