"""MLA: language acquirers on a frozen dual encoder (Zhang, Hu, Jin, NeurIPS 2022; ../shared/spec/MLA_FACTS.md).

A non-English sentence takes its own path into the frozen text tower: a shared non-native embedding
(``multilingual_embedding``, vocabulary of a multilingual tokenizer, plus ``multilingual_embedding_linear`` to
the text width), the frozen positions, then after EVERY frozen block a small residual bottleneck of that
language (``acquirers.<lang>.<i>``: ``x + c_proj(ReLU(c_fc(x)))``), and the frozen ``ln_final`` / projection
at the end-of-text position. English (the native language) never enters an acquirer: it is the frozen
tower itself, so its features are bit-identical to the native model's whatever the acquirers learn.

Frozen means enforced: the native model has ``requires_grad=False`` (so the trainer's optimizer, built from
trainable parameters, holds none of it) and stays in ``eval()`` whatever ``train()`` is called with.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.clip import DualEncoder, causal_mask, clip_contrastive_loss, eos_positions


@dataclass
class MLAConfig:
    """The acquisition parts (the native dual encoder has its own config)."""

    vocab_size: int = 250002
    """Non-native vocabulary (the multilingual tokenizer's size)."""
    embed_width: int = 768
    """Width of the non-native embedding table (M-BERT: 768); ``multilingual_embedding_linear`` maps it to
    the text width."""
    languages: list[str] = field(default_factory=lambda: ["de", "fr", "cs", "ja", "zh"])
    """Non-native languages, each with its own acquirer set."""
    native_lang: str = "en"
    eos_id: int = 2
    """End-of-text id of the NON-native tokenizer (``</s>`` = 2 in the XLM-R layout, [SEP] = 102 for M-BERT)."""
    bottleneck: int = 0
    """Acquirer hidden size; 0 = half the text width (MLA: 512 -> 256)."""
    use_acquirers: bool = True
    """False = the "w/o LA" ablation: the non-native embedding alone, no acquirers."""
    zero_init: bool = False
    """Zero the acquirers' up-projections (an identity at the start); MLA trains from the default init."""

    def to_dict(self) -> dict:
        return asdict(self)


class Acquirer(nn.Module):
    """``x + c_proj(ReLU(c_fc(x)))``: (B, L, W) -> (B, L, W), a residual bottleneck W -> b -> W."""

    def __init__(self, width: int, bottleneck: int, zero_init: bool = False):
        super().__init__()
        self.c_fc = nn.Linear(width, bottleneck)
        self.c_proj = nn.Linear(bottleneck, width)
        if zero_init:
            nn.init.zeros_(self.c_proj.weight)
            nn.init.zeros_(self.c_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.c_proj(F.relu(self.c_fc(x)))


class LanguageAcquisition(nn.Module):
    """The frozen ``native`` dual encoder plus θ_emb and per-language acquirers.

    State-dict keys: ``native.*`` (the frozen model, unchanged), ``multilingual_embedding.weight``,
    ``multilingual_embedding_linear.{weight,bias}``, ``acquirers.<lang>.<block>.{c_fc,c_proj}.*``.
    """

    def __init__(self, native: DualEncoder, cfg: MLAConfig):
        super().__init__()
        self.cfg = cfg
        self.native = native
        self.native.requires_grad_(False)
        width = native.cfg.text.width
        self.multilingual_embedding = nn.Embedding(cfg.vocab_size, cfg.embed_width)
        nn.init.normal_(self.multilingual_embedding.weight, std=0.02)  # "w/o EI"; init_embedding() replaces it
        self.multilingual_embedding_linear = nn.Linear(cfg.embed_width, width)
        self.acquirers = nn.ModuleDict()
        for lang in cfg.languages:
            self._new_acquirers(lang)
        self.native.eval()

    # ------------------------------------------------------------------------------------------ structure
    def _new_acquirers(self, lang: str) -> None:
        if lang == self.cfg.native_lang:
            raise ValueError(f"language '{lang}' is the native language: it never takes acquirers")
        if lang in self.acquirers:
            raise ValueError(f"language '{lang}' already has acquirers")
        text = self.native.cfg.text
        hidden = self.cfg.bottleneck or text.width // 2
        self.acquirers[lang] = nn.ModuleList(Acquirer(text.width, hidden, self.cfg.zero_init)
                                             for _ in range(text.layers))

    def add_language(self, lang: str, train_embedding: bool = False) -> None:
        """Add ``lang``'s acquirers and leave only them trainable (``train_embedding``: θ_emb too, which
        moves every other language slightly, as in MLA's Table 8; False keeps them bitwise unchanged)."""
        self._new_acquirers(lang)
        self.cfg.languages.append(lang)
        self.set_trainable([lang], train_embedding)

    def set_trainable(self, langs: list[str], train_embedding: bool) -> None:
        """Only the acquirers of ``langs`` (and θ_emb when ``train_embedding``) require grad; the native model
        never does. The optimizer is built from what requires grad, so nothing else can move."""
        unknown = sorted(set(langs) - set(self.acquirers))
        if unknown:
            raise KeyError(f"languages {unknown} have no acquirers (known: {sorted(self.acquirers)})")
        for name, module in self.acquirers.items():
            module.requires_grad_(name in langs)
        self.multilingual_embedding.requires_grad_(train_embedding)
        self.multilingual_embedding_linear.requires_grad_(train_embedding)

    def init_embedding(self, table: Tensor) -> None:
        """Copy a pretrained (V, embed_width) table (M-BERT / the demo's tiny XLM-R) into θ_emb."""
        if tuple(table.shape) != tuple(self.multilingual_embedding.weight.shape):
            raise ValueError(f"non-native embedding: expected a table of shape "
                             f"{tuple(self.multilingual_embedding.weight.shape)}, got {tuple(table.shape)}")
        with torch.no_grad():
            self.multilingual_embedding.weight.copy_(table)

    def train(self, mode: bool = True) -> "LanguageAcquisition":
        """Train the acquisition parts; the native model stays in eval mode (a deterministic teacher)."""
        super().train(mode)
        self.native.eval()
        return self

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Only what MLA trains (θ_emb and acquirers): the file a user ships for new languages."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("native.")}

    # ------------------------------------------------------------------------------------------ forward
    def encode_text(self, input_ids: Tensor, lang: str) -> Tensor:
        """(B, L) ids of ONE language -> (B, E) unnormalised text features.

        The native language goes through the frozen tower unchanged (its own tokenizer's ids); any other
        language through θ_emb and its own acquirers, never another language's.
        """
        if lang == self.cfg.native_lang:
            return self.native.encode_text(input_ids)
        if lang not in self.acquirers:
            raise KeyError(f"language '{lang}' has no acquirers (known: {sorted(self.acquirers)}, "
                           f"native: {self.cfg.native_lang})")
        tower = self.native.text
        x = self.multilingual_embedding_linear(self.multilingual_embedding(input_ids))  # (B, L, W)
        x = tower.add_positions(x)
        mask = causal_mask(x.size(1), x.device, x.dtype)
        for block, acquirer in zip(tower.transformer.resblocks, self.acquirers[lang]):
            x = block(x, mask)
            if self.cfg.use_acquirers:
                x = acquirer(x)
        return tower.pool(x, eos_positions(input_ids, self.cfg.eos_id))

    def encode_image(self, *inputs: Tensor) -> Tensor:
        """The frozen image tower (no gradient can reach it)."""
        return self.native.encode_image(*inputs)


def nlt_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Native Language Transfer: mean squared error over all B x E elements of the UNNORMALISED features."""
    return F.mse_loss(student, teacher.detach())


def le_loss(image: Tensor, text: Tensor, temperature: float = 0.01) -> Tensor:
    """Language Exposure: symmetric in-batch InfoNCE on cosine similarities with a FIXED temperature."""
    return clip_contrastive_loss(image.detach(), text, 1.0 / temperature)
