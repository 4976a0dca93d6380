"""Loading and saving UC2 weights with the original checkpoint's key names.

- :func:`load_uc2_checkpoint` reads a released UC2 state dict as is (float16 or float32, tied tensors
  under each of their names, unused ``vis_cls.*``) into any of the UC2 models.
- :func:`init_from_xlmr` starts a model from a local Hugging Face XLM-R folder.
- :func:`save_uc2_state_dict` / :func:`save_uc2_checkpoint` write what the original code can load.

Files are only ever read with ``torch.load(weights_only=True)`` or safetensors, so a checkpoint cannot
run code; anything that is not a flat ``{str: Tensor}`` mapping is refused with an error naming the file.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from utils.atomic import atomic_torch_save
from utils.errors import DataError

logger = logging.getLogger(__name__)

# Heads that exist only in fine-tuning models: a pretraining checkpoint is expected not to have them.
FINETUNE_HEAD_PREFIXES = ("rank_output.", "vqa_output.")
# Pretraining heads a fine-tuning model does not have: expected to be left over.
PRETRAIN_HEAD_PREFIXES = ("cls.", "itm_output.", "region_classifier.", "feat_regress.")
# Present in the released checkpoint, never used by the UC2 code.
IGNORED_PREFIXES = ("vis_cls.",)


@dataclass
class LoadReport:
    """What a load did, key by key (model key names)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    tied_aliases: list[str] = field(default_factory=list)
    initialised: dict[str, str] = field(default_factory=dict)

    @property
    def unexpected_missing(self) -> list[str]:
        """Missing keys that are not fine-tuning heads (suspicious)."""
        return [k for k in self.missing if not k.startswith(FINETUNE_HEAD_PREFIXES)]

    @property
    def unexpected_leftovers(self) -> list[str]:
        """Checkpoint keys without a place that are not known pretraining heads (suspicious)."""
        return [k for k in self.unexpected if not k.startswith(PRETRAIN_HEAD_PREFIXES)]

    def summary(self) -> str:
        """One paragraph for the log."""
        parts = [f"{self.source}: loaded {len(self.loaded)} tensors"]
        if self.tied_aliases:
            parts.append(f"tied aliases {self.tied_aliases}")
        if self.initialised:
            parts.append(f"initialised {self.initialised}")
        if self.missing:
            parts.append(f"missing (left at init) {_prefixes(self.missing)}")
        if self.unexpected:
            parts.append(f"unused {_prefixes(self.unexpected)}")
        if self.ignored:
            parts.append(f"ignored {len(self.ignored)} vis_cls.* tensors")
        return "; ".join(parts)


def _prefixes(keys: list[str]) -> list[str]:
    """Compact key list: 'region_classifier.*' instead of every tensor of the same module."""
    out: list[str] = []
    for key in keys:
        head = key.split(".")[0]
        label = f"{head}.*" if sum(k.startswith(head + ".") for k in keys) > 1 else key
        if label not in out:
            out.append(label)
    return out


def read_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a flat ``{name: Tensor}`` file safely (weights_only) on the CPU; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for truncated/foreign files
        raise DataError(f"{path}: not a readable weights-only torch checkpoint "
                        f"(truncated, not a torch file, or a pickle holding code): "
                        f"{type(exc).__name__}: {str(exc)[:200]}") from exc
    return check_state_dict(state, str(path))


def check_state_dict(state: object, source: str) -> dict[str, torch.Tensor]:
    """Return ``state`` as a dict after checking it maps str keys to tensors."""
    if not isinstance(state, Mapping):
        raise DataError(f"{source}: expected a state dict (mapping of name -> tensor), "
                        f"got {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise DataError(f"{source}: expected a state dict of tensors, key {key!r} holds "
                            f"{type(value).__name__}")
    return dict(state)


def tied_groups(model: nn.Module) -> list[list[str]]:
    """Groups (size >= 2) of state-dict names that share one tensor, e.g. the MLM decoder and the
    word embeddings; the first name of a group is the owning module's."""
    by_tensor: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        by_tensor.setdefault(id(tensor), []).append(name)
    return [names for names in by_tensor.values() if len(names) > 1]


def _fold_tied(state: dict[str, torch.Tensor], model: nn.Module, report: LoadReport) -> None:
    """Keep one value per tied group (the first name present) and note the other names as aliases."""
    for group in tied_groups(model):
        present = [name for name in group if name in state]
        for alias in present[1:]:
            state.pop(alias)
            report.tied_aliases.append(alias)


def _check_shapes(state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor],
                  source: str) -> None:
    for key, value in state.items():
        if key in model_state and value.shape != model_state[key].shape:
            raise DataError(f"{source}: shape mismatch for {key!r}: checkpoint {tuple(value.shape)}, "
                            f"model {tuple(model_state[key].shape)}")


def _init_rank_from_itm(state: dict[str, torch.Tensor], model: nn.Module, report: LoadReport) -> None:
    """Retrieval fine-tuning starts ``rank_output`` from the 'match' row (1) of ``itm_output``."""
    if not hasattr(model, "rank_output") or "rank_output.weight" in state:
        return
    if "itm_output.weight" in state and "itm_output.bias" in state:
        state["rank_output.weight"] = state["itm_output.weight"][1:2].clone()
        state["rank_output.bias"] = state["itm_output.bias"][1:2].clone()
        report.initialised["rank_output"] = "itm_output row 1"


def load_uc2_checkpoint(model: nn.Module, path_or_state: str | Path | Mapping[str, torch.Tensor],
                        strict_heads: bool = False, allow_partial: bool = False) -> LoadReport:
    """Load a UC2 state dict (original key names) into ``model``; returns what was done.

    Tensors are cast to float32; tied aliases (``cls.decoder.weight``, ``cls.decoder.bias``,
    ``feat_regress.weight``) are accepted; ``vis_cls.*`` is ignored. Raises DataError on a shape
    mismatch (naming the key and both shapes), when backbone (``roberta.*``) tensors are missing and
    ``allow_partial`` is False (set it for partial files such as an Early Adaptation checkpoint), and,
    with ``strict_heads``, when a missing or unused key is not an expected fine-tuning/pretraining head.
    """
    is_path = isinstance(path_or_state, (str, Path))
    source = str(path_or_state) if is_path else "<state dict>"
    state = read_state_file(path_or_state) if is_path else check_state_dict(path_or_state, source)
    report = LoadReport(source)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    report.ignored = sorted(k for k in state if k.startswith(IGNORED_PREFIXES))
    if report.ignored:
        logger.info("%s: ignoring %d unused vis_cls.* tensors", source, len(report.ignored))
    state = {k: v for k, v in state.items() if k not in report.ignored}
    model_state = model.state_dict()
    _check_shapes(state, model_state, source)
    _fold_tied(state, model, report)
    _init_rank_from_itm(state, model, report)
    covered = set(state) | set(report.tied_aliases)
    for group in tied_groups(model):  # one loaded name covers the whole group
        if covered & set(group):
            covered |= set(group)
    report.missing = [k for k in model_state if k not in covered]
    report.unexpected = [k for k in state if k not in model_state]
    report.loaded = [k for k in state if k in model_state]
    _enforce(report, strict_heads, allow_partial)
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    logger.info(report.summary())
    return report


def _enforce(report: LoadReport, strict_heads: bool, allow_partial: bool) -> None:
    missing_backbone = [k for k in report.missing if k.startswith("roberta.")]
    if missing_backbone and not allow_partial:
        raise DataError(f"{report.source}: backbone tensors missing from the checkpoint: "
                        f"{missing_backbone[:8]}{' ...' if len(missing_backbone) > 8 else ''} "
                        f"(pass allow_partial=True to load a partial file)")
    if strict_heads and (report.unexpected_missing or report.unexpected_leftovers):
        raise DataError(f"{report.source}: strict_heads: missing {report.unexpected_missing}, "
                        f"unused {report.unexpected_leftovers}")


def save_uc2_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Flat fp32 CPU state dict with the original key names, tied aliases included (each name its own
    tensor copy), so the original UC2 code loads it unchanged."""
    return {k: v.detach().to("cpu", torch.float32).clone() if v.is_floating_point() else v.detach().cpu()
            for k, v in model.state_dict().items()}


def save_uc2_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Write :func:`save_uc2_state_dict` to ``path`` atomically (temp file in the same folder, rename)."""
    return atomic_torch_save(save_uc2_state_dict(model), path)


# Hugging Face XLM-R MLM-head names -> UC2 ``cls`` names. The original code missed these (name
# mismatch) and started its MLM head transform from scratch; we map them.
_LM_HEAD_RENAMES = {
    "lm_head.dense.weight": "cls.dense.weight",
    "lm_head.dense.bias": "cls.dense.bias",
    "lm_head.layer_norm.weight": "cls.layer_norm.weight",
    "lm_head.layer_norm.bias": "cls.layer_norm.bias",
    "lm_head.bias": "cls.bias",
}
# Tied copies in the HF file (same tensors as word embeddings / lm_head.bias) and buffers.
_XLMR_SKIP = ("lm_head.decoder.weight", "lm_head.decoder.bias", "embeddings.position_ids")
_XLMR_TYPE_TABLE = "embeddings.token_type_embeddings.weight"


def read_hf_folder(hf_dir: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local HF model folder (model.safetensors or pytorch_model.bin), with the
    ``roberta.`` prefix removed so both XLMRobertaModel and XLMRobertaForMaskedLM files look alike."""
    hf_dir = Path(hf_dir)
    if (hf_dir / "model.safetensors").is_file():
        from safetensors.torch import load_file  # local import: only this loader needs it

        try:
            state = load_file(str(hf_dir / "model.safetensors"))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise DataError(f"{hf_dir / 'model.safetensors'}: unreadable safetensors file: {exc}") from exc
    elif (hf_dir / "pytorch_model.bin").is_file():
        state = read_state_file(hf_dir / "pytorch_model.bin")
    else:
        raise DataError(f"{hf_dir}: no model.safetensors or pytorch_model.bin (sharded checkpoints are "
                        f"not supported)")
    return {k.removeprefix("roberta."): v.float() if v.is_floating_point() else v for k, v in state.items()}


def _xlmr_target(key: str, model_keys: Mapping[str, torch.Tensor]) -> str | None:
    """UC2 name for an (unprefixed) XLM-R key, or None when the model has no place for it."""
    target = _LM_HEAD_RENAMES.get(key, "roberta." + key)
    return target if target in model_keys else None


def init_from_xlmr(model: nn.Module, hf_dir: str | Path, text_type_from_xlmr: bool = False) -> LoadReport:
    """Initialise ``model`` from a local Hugging Face XLM-R folder.

    Loads word/position embeddings, the text-embedding LayerNorm, all encoder layers, the pooler if
    the file has one, and ``lm_head.dense/layer_norm/bias`` into ``cls.*`` when the model has an MLM
    head. The 2-row ``new_token_type_embeddings`` and ``img_embeddings`` stay fresh, as in the original;
    with ``text_type_from_xlmr`` the text row (0) is copied from XLM-R's single type row instead, which
    keeps XLM-R's text behaviour exactly. Missing encoder/embedding tensors or wrong shapes raise.
    """
    hf_dir = Path(hf_dir)
    state = read_hf_folder(hf_dir)
    model_keys = model.state_dict()
    report = LoadReport(str(hf_dir))
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        target = None if key in _XLMR_SKIP or key == _XLMR_TYPE_TABLE else _xlmr_target(key, model_keys)
        if target is None:
            (report.tied_aliases if key in _XLMR_SKIP else report.unexpected).append(key)
        else:
            mapped[target] = value
    if text_type_from_xlmr and _XLMR_TYPE_TABLE in state:
        table = model_keys["roberta.embeddings.new_token_type_embeddings.weight"].clone()
        table[0] = state[_XLMR_TYPE_TABLE][0]
        mapped["roberta.embeddings.new_token_type_embeddings.weight"] = table
        report.unexpected.remove(_XLMR_TYPE_TABLE)
        report.initialised["roberta.embeddings.new_token_type_embeddings.weight[0]"] = _XLMR_TYPE_TABLE
    _check_shapes(mapped, model_keys, str(hf_dir))
    needed = [k for k in model_keys if k.startswith(("roberta.encoder.", "roberta.embeddings.word_",
                                                     "roberta.embeddings.position_"))]
    absent = [k for k in needed if k not in mapped]
    if absent:
        raise DataError(f"{hf_dir}: XLM-R tensors missing for {absent[:8]} (is this an XLM-R folder with "
                        f"{model.config.num_hidden_layers} layers?)")
    model.load_state_dict(mapped, strict=False)
    report.loaded = sorted(mapped)
    covered = set(mapped)
    for group in tied_groups(model):
        if covered & set(group):
            covered |= set(group)
    report.missing = [k for k in model_keys if k not in covered]
    logger.info(report.summary())
    return report
