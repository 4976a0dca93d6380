"""Output heads of the UC2 models, with the module names of the original checkpoint.

Every head takes hidden states that the caller has already gathered (N, H): only masked tokens or
regions, or the pooled output, so the 250k-word vocabulary never runs over a whole sequence.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

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


class _VocabProjection(torch.autograd.Function):
    """``x @ weight.T + bias`` for the tied MLM decoder, x (N, H), weight (V, H), bias (V,) -> (N, V).

    Same numbers as ``F.linear``; only the weight gradient differs in layout: ``F.linear`` hands the
    weight a transposed view of its (V, H) gradient, so autograd then adds the tied word-embedding
    gradient out of place, allocating a third vocabulary-sized buffer every step. Here the weight
    gradient is a plain contiguous tensor and the embedding gradient is added into it in place
    (measured on CPU at V = 250k, 140 targets: 4.66 s -> 4.21 s for embedding + head forward/backward).
    Under autocast the inputs are cast as ``F.linear`` would cast them, and saved cast.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
        ctx.save_for_backward(x, weight)
        return torch.addmm(bias, x, weight.t())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.to(x.dtype)
        grad_x = grad.mm(weight) if ctx.needs_input_grad[0] else None
        grad_weight = grad.t().mm(x) if ctx.needs_input_grad[1] else None  # (V, H), contiguous
        grad_bias = grad.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


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
        """hidden (N, H) (or (..., H)) -> vocabulary logits (N, V) (or (..., V))."""
        states = self.layer_norm(self.act(self.dense(hidden)))
        flat = states.reshape(-1, states.shape[-1])  # (N, H)
        logits = _VocabProjection.apply(flat, self.decoder.weight, self.decoder.bias)  # (N, V)
        return logits.view(*states.shape[:-1], logits.shape[-1])


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


# ------------------------------------------------------------------------------------------------------
# head factories: what a task declares for each head it trains (see docs/ARCHITECTURE.md, "Heads")
# ------------------------------------------------------------------------------------------------------
#: A head factory builds one head from the model config and the backbone (``roberta``, for tied weights).
HeadFactory = Callable[[UC2ModelConfig, nn.Module], nn.Module]

#: Order of the heads in the released checkpoints. Heads are created in this order (then any other head in
#: the order declared), so a model's state-dict layout and its random initialisation do not depend on
#: the order in which a run's tasks happen to be listed.
HEAD_ORDER = ("cls", "itm_output", "region_classifier", "feat_regress", "rank_output", "vqa_output")


def mlm_head(config: UC2ModelConfig, backbone: nn.Module) -> MLMHead:
    """``cls``: the MLM head, decoder tied to the backbone's word embeddings (MLM, MRTM, VTLM)."""
    return MLMHead(config, backbone.embeddings.word_embeddings)


def itm_head(config: UC2ModelConfig, backbone: nn.Module) -> nn.Linear:
    """``itm_output``: Linear(H, 2) on the pooled output (column 1 = match)."""
    return nn.Linear(config.hidden_size, 2)


def region_classifier_head(config: UC2ModelConfig, backbone: nn.Module) -> RegionClassifier:
    """``region_classifier``: masked-region detector-class logits (MRC)."""
    return RegionClassifier(config)


def feat_regress_head(config: UC2ModelConfig, backbone: nn.Module) -> FeatRegression:
    """``feat_regress``: masked-region feature regression, tied to ``img_embeddings.img_linear`` (MRFR)."""
    return FeatRegression(config, backbone.img_embeddings.img_linear)


def rank_head(config: UC2ModelConfig, backbone: nn.Module) -> nn.Linear:
    """``rank_output``: Linear(H, 1) retrieval score on the pooled output."""
    return nn.Linear(config.hidden_size, 1)


def _sized_vqa_head(num_answers: int, config: UC2ModelConfig, backbone: nn.Module) -> nn.Sequential:
    return vqa_head(config, num_answers)


def vqa_head_factory(num_answers: int) -> HeadFactory:
    """``vqa_output`` for an answer vocabulary of ``num_answers`` (a resource the VQA task builds).

    A partial of a module-level function, not a closure: the factory travels with the task object into
    forkserver/spawn loader workers, so it must pickle.
    """
    if num_answers < 1:
        raise ValueError(f"num_answers must be >= 1, got {num_answers}")
    return functools.partial(_sized_vqa_head, num_answers)


#: The heads of the released UC2 pretraining checkpoint; a pretraining model always has all four.
PRETRAIN_HEADS: dict[str, HeadFactory] = {"cls": mlm_head, "itm_output": itm_head,
                                          "region_classifier": region_classifier_head,
                                          "feat_regress": feat_regress_head}
