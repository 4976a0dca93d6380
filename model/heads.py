"""Output heads of the UC2 models, with the module names of the original checkpoint.

Every head takes hidden states that the caller has already gathered (N, H): only masked tokens or
regions, or the pooled output, so the 250k-word vocabulary never runs over a whole sequence.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import UC2ModelConfig


def activation(name: str) -> nn.Module:
    """The feed-forward activation named as in Hugging Face configs."""
    if name == "gelu":
        return nn.GELU()  # erf form, as BERT/XLM-R
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return nn.GELU(approximate="tanh")
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"hidden_act {name!r} is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)")


class MLMHead(nn.Module):
    """RoBERTa MLM head ``cls``: dense -> GELU -> layer_norm -> decoder tied to the word embeddings.

    Also the MRTM head (regions predict their class word with the same head). ``bias`` is registered
    twice, as ``cls.bias`` and ``cls.decoder.bias``, like the original checkpoint.
    """

    def __init__(self, config: UC2ModelConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation("gelu")
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.decoder.weight = word_embeddings.weight  # tied: one Parameter, two state-dict names
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, H) -> vocabulary logits (N, V)."""
        return self.decoder(self.layer_norm(self.act(self.dense(hidden))))


class RegionClassifier(nn.Module):
    """MRC head ``region_classifier.net`` = Linear(H,H), GELU, LayerNorm, Linear(H, img_label_dim)."""

    def __init__(self, config: UC2ModelConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.net = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h, eps=config.encoder_eps),
                                 nn.Linear(h, config.img_label_dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, H) -> detector-class logits (N, img_label_dim)."""
        return self.net(hidden)


class FeatRegression(nn.Module):
    """MRFR head: ``net`` = Linear(H,H), GELU, LayerNorm, then a projection back to the feature space
    whose weight is ``img_embeddings.img_linear.weight`` (H, D) used transposed (state-dict key
    ``feat_regress.weight``) plus its own bias ``feat_regress.bias`` (D)."""

    def __init__(self, config: UC2ModelConfig, img_linear: nn.Linear) -> None:
        super().__init__()
        h = config.hidden_size
        self.net = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h, eps=config.encoder_eps))
        self.weight = img_linear.weight  # tied to the image projection
        self.bias = nn.Parameter(torch.zeros(config.img_dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, H) -> regressed region features (N, D)."""
        return F.linear(self.net(hidden), self.weight.t(), self.bias)


def vqa_head(config: UC2ModelConfig, num_answers: int) -> nn.Sequential:
    """VQA head ``vqa_output`` = Linear(H,2H), GELU, LayerNorm(2H), Linear(2H, num_answers)."""
    h = config.hidden_size
    return nn.Sequential(nn.Linear(h, 2 * h), nn.GELU(), nn.LayerNorm(2 * h, eps=config.encoder_eps),
                         nn.Linear(2 * h, num_answers))
