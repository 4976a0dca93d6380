"""Model configuration of the UC2 transformer, with Hugging Face parameter names.

The same JSON file can be one of ours (written by :meth:`UC2ModelConfig.to_json`), the model config of
the original UC2 code (HF names, no ``model_type``), or a Hugging Face XLM-R ``config.json`` (it has
``model_type``/``architectures``). Keys that only matter to Hugging Face are ignored with a debug log
line (in an HF file: every key UC2 does not use, and ``type_vocab_size``, since UC2 always has its own
2-row text/image table). In our files any other unknown key, and in all files a value of the wrong
type, raises :class:`utils.config.ConfigError` naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.atomic import atomic_write_json
from utils.errors import ConfigError

logger = logging.getLogger(__name__)

# Keys a Hugging Face (XLM-)RoBERTa config.json carries that have no meaning for UC2.
_HF_ONLY_KEYS = frozenset({
    "architectures", "model_type", "transformers_version", "bos_token_id", "eos_token_id",
    "output_past", "position_embedding_type", "use_cache", "classifier_dropout", "torch_dtype",
    "dtype", "gradient_checkpointing", "tokenizer_class", "is_decoder", "add_cross_attention",
    "return_dict", "output_hidden_states", "output_attentions", "chunk_size_feed_forward",
    "id2label", "label2id", "problem_type", "_name_or_path", "name_or_path", "sep_token_id",
    "cls_token_id", "mask_token_id", "unk_token_id", "tie_word_embeddings",
    # written by pytorch_transformers 1.x, which the original UC2 used
    "finetuning_task", "num_labels", "torchscript", "pruned_heads", "use_bfloat16",
})
# In a Hugging Face config these describe XLM-R, not UC2: UC2 always adds a fresh 2-row type table.
_HF_OVERRIDDEN_KEYS = frozenset({"type_vocab_size"})


@dataclass
class UC2ModelConfig:
    """Shape and regularisation of the UC2 single-stream transformer (XLM-R base by default)."""

    vocab_size: int = 250002
    """Number of XLM-R sub-word ids (``<mask>`` = 250001)."""
    hidden_size: int = 768
    """Width H of every hidden state."""
    num_hidden_layers: int = 12
    """Number of transformer layers."""
    num_attention_heads: int = 12
    """Attention heads per layer; must divide hidden_size."""
    intermediate_size: int = 3072
    """Width of the feed-forward layer."""
    hidden_act: str = "gelu"
    """Feed-forward activation: "gelu" (erf), "gelu_new"/"gelu_pytorch_tanh" (tanh form) or "relu"."""
    hidden_dropout_prob: float = 0.1
    """Dropout on embeddings and sub-layer outputs."""
    attention_probs_dropout_prob: float = 0.1
    """Dropout on attention probabilities (training only)."""
    max_position_embeddings: int = 514
    """Rows of the position table (XLM-R: positions start at 2, padding uses 1)."""
    type_vocab_size: int = 2
    """Rows of ``new_token_type_embeddings``: 0 = text, 1 = image."""
    initializer_range: float = 0.02
    """Standard deviation of the normal weight initialisation."""
    layer_norm_eps: float = 1e-5
    """Epsilon of the embedding and MLM-head LayerNorms."""
    pad_token_id: int = 1
    """Id of ``<pad>``."""
    img_dim: int = 2048
    """Width D of a region feature (2048 for BUTD Faster R-CNN; 40 in the test fixtures)."""
    img_label_dim: int = 1601
    """Detector classes including background (index 0)."""
    encoder_layer_norm_eps: float | None = 1e-12
    """Epsilon of the LayerNorms inside encoder layers and of the UNITER-derived heads (MRC, MRFR, VQA).
    The original code used 1e-12 there (UNITER's layer class) whatever layer_norm_eps said; this value
    reproduces the original outputs. None means "use layer_norm_eps" (as Hugging Face XLM-R does)."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})")
        if self.type_vocab_size < 2:
            raise ConfigError(f"type_vocab_size must be >= 2 (text and image), got {self.type_vocab_size}")

    @property
    def encoder_eps(self) -> float:
        """Epsilon actually used inside encoder layers and the UNITER-derived heads."""
        return self.layer_norm_eps if self.encoder_layer_norm_eps is None else self.encoder_layer_norm_eps

    @classmethod
    def xlmr_base(cls, **overrides: Any) -> "UC2ModelConfig":
        """The released UC2 shape: XLM-R base + 2048-d BUTD features."""
        return cls(**overrides)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "<dict>") -> "UC2ModelConfig":
        """Build from a mapping of HF-named keys; ``source`` names the origin in error messages."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(values).__name__}")
        is_hf = "model_type" in values or "architectures" in values
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            # A Hugging Face file describes XLM-R with many keys of its own: take what UC2 uses.
            if key in _HF_ONLY_KEYS or (is_hf and (key in _HF_OVERRIDDEN_KEYS or key not in fields)):
                logger.debug("%s: ignoring Hugging Face key %r", source, key)
                continue
            if key not in fields:
                raise ConfigError(
                    f"{source}: unknown model config key {key!r}; known keys: {', '.join(sorted(fields))}")
            kwargs[key] = _check_type(key, value, fields[key].type, source)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> "UC2ModelConfig":
        """Read a model config JSON file (ours, the original UC2 one, or an HF XLM-R config.json)."""
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read model config JSON ({exc})") from exc
        return cls.from_dict(values, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with HF parameter names (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path) -> None:
        """Write the config atomically (temp file then rename)."""
        atomic_write_json(self.to_dict(), path, indent=1)


def _check_type(key: str, value: Any, annotation: str, source: str) -> Any:
    """Return ``value`` (ints widened to float where a float is expected) or raise naming the key."""
    ann = str(annotation)
    if ann.startswith("float") and value is None and "None" in ann:
        return None
    if ann.startswith("float") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if ann == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if ann == "str" and isinstance(value, str):
        return value
    raise ConfigError(f"{source}: key {key!r} expects {ann}, got {value!r} ({type(value).__name__})")
