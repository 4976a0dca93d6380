"""Load CLIP weights into :class:`model.clip.DualEncoder`: OpenAI / open_clip state dicts and Hugging Face
``CLIPModel`` folders, offline. The config is read from the weights' shapes (OpenAI) or ``config.json`` (HF);
the activation is never guessed silently: OpenAI weights need QuickGELU, and loading them into a GELU
tower raises no error, it only gives other features (MLA_FACTS §6.1), so the caller states it.

Our keys are OpenAI's under ``text.`` (text tower) and ``visual.`` (image tower), plus ``logit_scale``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor

from model.clip import DualEncoder, DualEncoderConfig, TextConfig, VisionConfig

# OpenAI TorchScript archives carry these non-weight entries.
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")
# HF block names -> OpenAI block names (the q/k/v projections are packed separately).
_HF_BLOCK = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
_HF_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",   # sic: HF's spelling
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}


def _count_blocks(state: dict[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    ids = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    return max(ids) + 1 if ids else 0


def config_from_openai(state: dict[str, Tensor], act: str = "quick_gelu", heads: tuple[int, int] | None = None
                       ) -> DualEncoderConfig:
    """The ViT dual-encoder config implied by the shapes of an OpenAI state dict; ``heads`` (text, vision)
    default to width / 64, OpenAI's rule (shapes do not store them)."""
    try:
        v_width, _, patch, _ = state["visual.conv1.weight"].shape
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vocab, t_width = state["token_embedding.weight"].shape
        context = state["positional_embedding"].shape[0]
        embed_dim = state["text_projection"].shape[1]
        v_ffn = state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        t_ffn = state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    except KeyError as err:
        raise KeyError(f"OpenAI CLIP state dict: missing {err} (expected ViT CLIP keys such as "
                       f"'visual.conv1.weight', 'token_embedding.weight')") from None
    t_heads, v_heads = heads or (t_width // 64, v_width // 64)
    text = TextConfig(width=t_width, layers=_count_blocks(state, "transformer.resblocks."), heads=t_heads,
                      ffn=t_ffn, act=act, vocab_size=vocab, context_length=context, eos_id=vocab - 1)
    vision = VisionConfig(kind="vit", width=v_width, layers=_count_blocks(state, "visual.transformer.resblocks."),
                          heads=v_heads, ffn=v_ffn, act=act, image_size=patch * grid, patch_size=patch)
    return DualEncoderConfig(text=text, vision=vision, embed_dim=embed_dim,
                             logit_scale_init=float(state["logit_scale"]))


def openai_to_ours(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """OpenAI / open_clip keys -> ours: ``visual.*`` and ``logit_scale`` unchanged, the rest under ``text.``;
    fp16 weights cast to fp32 once here (before any bitwise comparison)."""
    out = {}
    for key, value in state.items():
        if key in _OPENAI_EXTRAS:
            continue
        new = key if key.startswith("visual.") or key == "logit_scale" else f"text.{key}"
        out[new] = value.float() if value.is_floating_point() else value
    return out


def load_openai_file(path: str | Path, act: str = "quick_gelu", trusted_torchscript: bool = False,
                     heads: tuple[int, int] | None = None) -> tuple[DualEncoder, DualEncoderConfig]:
    """A :class:`DualEncoder` from an OpenAI/open_clip checkpoint file (state dict or, only when
    ``trusted_torchscript``, OpenAI's TorchScript ``.pt``, which cannot be read with ``weights_only``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    elif trusted_torchscript:
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except RuntimeError as exc:
            raise ValueError(f"{path}: cannot read as a plain state dict ({exc}); an OpenAI TorchScript "
                             f"archive needs trusted_torchscript=True") from None
        state = state.get("state_dict", state)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    cfg = config_from_openai(state, act, heads)
    return _build(cfg, openai_to_ours(state), str(path)), cfg


def hf_to_openai(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face ``CLIPModel`` keys -> OpenAI keys (q/k/v packed into ``in_proj``, projections transposed)."""
    out: dict[str, Tensor] = {}
    for hf_key, key in _HF_TOP.items():
        if hf_key in state:
            out[key] = state[hf_key]
    out["text_projection"] = state["text_projection.weight"].t()
    if "visual_projection.weight" in state:
        out["visual.proj"] = state["visual_projection.weight"].t()
    for hf_prefix, prefix in (("text_model.encoder.layers.", "transformer.resblocks."),
                              ("vision_model.encoder.layers.", "visual.transformer.resblocks.")):
        for i in range(_count_blocks(state, hf_prefix)):
            out.update(_hf_block(state, f"{hf_prefix}{i}.", f"{prefix}{i}."))
    return out


def _hf_block(state: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    out = {}
    for hf_name, name in _HF_BLOCK.items():
        for p in ("weight", "bias"):
            out[f"{dst}{name}.{p}"] = state[f"{src}{hf_name}.{p}"]
    for p in ("weight", "bias"):
        out[f"{dst}attn.in_proj_{p}"] = torch.cat([state[f"{src}self_attn.{x}_proj.{p}"] for x in "qkv"])
    return out


def config_from_hf(raw: dict) -> DualEncoderConfig:
    """Our config from a HF ``CLIPConfig`` dict. HF pools at ``argmax(ids)`` when ``eos_token_id == 2``
    (legacy configs): for CLIP's BPE that is the largest id, ``vocab_size - 1``."""
    t, v = raw.get("text_config", {}), raw.get("vision_config", {})
    vocab = t.get("vocab_size", 49408)
    eos = t.get("eos_token_id", 2)
    text = TextConfig(width=t.get("hidden_size", 512), layers=t.get("num_hidden_layers", 12),
                      heads=t.get("num_attention_heads", 8), ffn=t.get("intermediate_size", 2048),
                      act=t.get("hidden_act", "quick_gelu"), ln_eps=t.get("layer_norm_eps", 1e-5),
                      vocab_size=vocab, context_length=t.get("max_position_embeddings", 77),
                      eos_id=vocab - 1 if eos == 2 else eos)
    vision = VisionConfig(kind="vit", width=v.get("hidden_size", 768), layers=v.get("num_hidden_layers", 12),
                          heads=v.get("num_attention_heads", 12), ffn=v.get("intermediate_size", 3072),
                          act=v.get("hidden_act", "quick_gelu"), ln_eps=v.get("layer_norm_eps", 1e-5),
                          image_size=v.get("image_size", 224), patch_size=v.get("patch_size", 32))
    return DualEncoderConfig(text=text, vision=vision, embed_dim=raw.get("projection_dim", 512),
                             logit_scale_init=raw.get("logit_scale_init_value", 2.6592))


def _read_hf_weights(folder: Path) -> dict[str, Tensor]:
    if (folder / "model.safetensors").exists():
        from safetensors.torch import load_file
        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").exists():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin (expected a HF CLIPModel folder)")


def load_hf_folder(folder: str | Path) -> tuple[DualEncoder, DualEncoderConfig]:
    """A :class:`DualEncoder` from a local Hugging Face ``CLIPModel`` folder (no hub access)."""
    folder = Path(folder)
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{folder}/config.json: cannot read a CLIP config ({exc})") from None
    cfg = config_from_hf(raw)
    state = openai_to_ours(hf_to_openai(_read_hf_weights(folder)))
    return _build(cfg, state, str(folder)), cfg


def _build(cfg: DualEncoderConfig, state: dict[str, Tensor], source: str) -> DualEncoder:
    model = DualEncoder(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise KeyError(f"{source}: weights do not fit the dual encoder (missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]})")
    return model.eval()
