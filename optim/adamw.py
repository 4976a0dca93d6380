"""AdamW with UC2's parameter groups: no weight decay on biases and LayerNorm weights, optional per-prefix
learning-rate multipliers (VQA's answer head gets 10x; retrieval may give embeddings their own rate)."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn


def _no_decay_names(model: nn.Module) -> set[str]:
    """Biases and every LayerNorm parameter. Found by module type, because some LayerNorms have numeric
    names in UC2 checkpoints (e.g. ``region_classifier.net.2``) that a name rule would miss."""
    names = set()
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if isinstance(module, nn.LayerNorm) or p_name == "bias":
                names.add(full)
    return names


def _multiplier(name: str, lr_multipliers: Mapping[str, float]) -> float:
    """Multiplier of the longest prefix of ``name`` in ``lr_multipliers`` (1.0 when none matches)."""
    matches = [p for p in lr_multipliers if name == p or name.startswith(p.rstrip(".") + ".")]
    return float(lr_multipliers[max(matches, key=len)]) if matches else 1.0


def param_groups(model: nn.Module, lr: float, weight_decay: float,
                 lr_multipliers: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """Groups keyed by (decay or not, lr multiplier); each group records ``lr_mult`` and its names."""
    no_decay = _no_decay_names(model)
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = name not in no_decay
        mult = _multiplier(name, lr_multipliers or {})
        group = groups.setdefault((decay, mult), {
            "params": [], "names": [], "lr": lr * mult, "lr_mult": mult,
            "weight_decay": weight_decay if decay else 0.0})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: Any, lr_multipliers: Mapping[str, float] | None = None
                    ) -> torch.optim.AdamW:
    """AdamW from a :class:`training.run_config.TrainConfig` (learning_rate, betas, adam_eps, weight_decay).

    Uses the fused CUDA kernel when every parameter is on CUDA, the foreach path otherwise. Build it after
    the model has been moved to its device.
    """
    groups = param_groups(model, cfg.learning_rate, cfg.weight_decay, lr_multipliers)
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    impl = {"fused": True} if on_cuda else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=tuple(cfg.betas), eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay, **impl)
