"""The image-text contrastive (ITC) head ``itc``: a dual encoder on UC2's own single-modality passes.

UC2 is a single-stream cross-encoder: a (caption, image) score needs one transformer pass over the packed
pair. For fast retrieval (evaluation/shortlist.py) every caption and every image is embedded ONCE, alone:

* text-only pass: ``roberta.embeddings`` (word + position + type 0) then ``roberta.encoder`` with the
  caption's own tokens only (``<s> ... </s>``, padding masked out);
* image-only pass: ``roberta.img_embeddings`` (with the image type row) then ``roberta.encoder`` with the
  image's real regions only;

so both read every backbone layer (embeddings and all ``num_hidden_layers`` encoder layers, shared with
the cross-encoder) and no head of the cross-encoder. Each side is pooled by the MASKED MEAN of the last
layer's hidden states (non-pad tokens / real regions), projected to ``dim`` and L2-normalised:

    t = normalize(text_proj(mean_tokens(encoder(text)))),  v = normalize(image_proj(mean_regions(encoder(img))))
    similarity(t, v) = t . v   (cosine; the logit of the contrastive loss is sim * exp(logit_scale))

Why a mean and not ``<s>`` / the pooler: the pooler (``tanh(dense(h_<s>))``) is trained for ITM on PAIRS;
on a single-modality pass, and in a randomly initialised or early model, ``h_<s>`` is almost the same for
every input (measured: a random tiny backbone's ``<s>`` state barely depends on the caption, so a
contrastive loss on it cannot fit even one batch), while the token mean carries the input from the start.
An image-only pass has no ``<s>`` at all.

Parameters (checkpoint keys): ``itc.text_proj.{0.weight, 0.bias, 2.weight}`` (a two-layer MLP, H -> H -> dim),
``itc.image_proj.*`` alike, ``itc.logit_scale`` () = log(1 / temperature) (trained when the temperature is
learned). By default (``ItcConfig.train_backbone`` false) the objective trains only this head on the
backbone's detached states: the cross-encoder is untouched by it (measured: with gradients into the
backbone, Adam at lr 5e-3 collapses a tiny random backbone's single-modality states onto one direction).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import UC2ModelConfig

ITC_HEAD = "itc"


class ItcHead(nn.Module):
    """Projections of the pooled text-only and image-only passes, and the contrastive logit scale."""

    def __init__(self, hidden_size: int, dim: int = 256, temperature: float = 0.07, learn_temperature: bool = True):
        super().__init__()
        if dim < 1 or not temperature > 0:
            raise ValueError(f"itc head: expected dim >= 1 and temperature > 0, got {dim} and {temperature}")
        self.text_proj = projection(hidden_size, dim)
        self.image_proj = projection(hidden_size, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)

    def post_init(self) -> None:
        """CLIP's projection init, N(0, 1/fan_in), after the model's BERT init (std 0.02): with 0.02 a
        first Adam step at lr 5e-3 moves the weights by a quarter of their size and the embeddings of a
        batch collapse onto one direction (measured on the contract test's tiny batch)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=module.in_features ** -0.5)

    @property
    def dim(self) -> int:
        return self.text_proj[-1].out_features


def projection(hidden_size: int, dim: int) -> nn.Sequential:
    """Linear(H, H), GELU, Linear(H, dim) without bias (a bias shared by every input only moves all
    embeddings alike, and a large Adam step on it collapses them onto one direction)."""
    return nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, dim, bias=False))


def _build_itc_head(config: UC2ModelConfig, backbone: nn.Module, dim: int, temperature: float,
                    learn_temperature: bool) -> ItcHead:
    return ItcHead(config.hidden_size, dim, temperature, learn_temperature)


def itc_head_factory(dim: int = 256, temperature: float = 0.07, learn_temperature: bool = True):
    """Head factory ``(config, backbone) -> ItcHead`` with the task's knobs (a partial: it pickles, as a
    task sent to loader workers must)."""
    return functools.partial(_build_itc_head, dim=dim, temperature=temperature, learn_temperature=learn_temperature)


#: the factory with the default knobs (registry declaration; the task builds its own from its config)
itc_head = itc_head_factory()


def has_itc_head(model: nn.Module) -> bool:
    return isinstance(getattr(model, ITC_HEAD, None), ItcHead)


def masked_mean(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """hidden (B, L, H), keep (B, L) bool -> (B, H) mean over kept positions (fp32)."""
    weights = keep.to(torch.float32).unsqueeze(-1)                              # (B, L, 1)
    return (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def text_pooled(model: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Text-only pass: input_ids, position_ids (B, Lt) -> masked mean of the last layer (B, H) fp32."""
    # the model's own pad id (config.pad_token_id, the embedding's padding_idx), not a second constant
    keep = input_ids != model.roberta.embeddings.word_embeddings.padding_idx    # (B, Lt)
    hidden = model.roberta.encoder(model.roberta.embeddings(input_ids, position_ids), keep.long())
    return masked_mean(hidden, keep)


def image_pooled(model: nn.Module, img_feat: torch.Tensor, img_pos_feat: torch.Tensor,
                 keep: torch.Tensor) -> torch.Tensor:
    """Image-only pass: img_feat (B, Ni, D), img_pos_feat (B, Ni, 7), keep (B, Ni) bool (real regions)
    -> masked mean of the last layer (B, H) fp32."""
    backbone = model.roberta
    hidden = backbone.encoder(backbone.img_embeddings(img_feat, img_pos_feat, backbone.embeddings.type_row(1)),
                              keep.long())
    return masked_mean(hidden, keep)


def text_embeddings(model: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """L2-normalised (B, dim) fp32 caption embeddings (text-only pass, ``itc.text_proj``)."""
    return project(model.itc.text_proj, text_pooled(model, input_ids, position_ids))


def image_embeddings(model: nn.Module, img_feat: torch.Tensor, img_pos_feat: torch.Tensor,
                     keep: torch.Tensor) -> torch.Tensor:
    """L2-normalised (B, dim) fp32 image embeddings (image-only pass, ``itc.image_proj``)."""
    return project(model.itc.image_proj, image_pooled(model, img_feat, img_pos_feat, keep))


def project(proj: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    """Projection and L2 normalisation in fp32 (outside autocast, like the cross-encoder's heads)."""
    with torch.autocast(pooled.device.type, enabled=False):
        return F.normalize(proj(pooled.float()), dim=-1)


def region_mask(num_bbs: torch.Tensor, n_max: int) -> torch.Tensor:
    """(B,) region counts -> (B, n_max) bool, True on real regions."""
    return torch.arange(n_max, device=num_bbs.device)[None, :] < num_bbs[:, None]
