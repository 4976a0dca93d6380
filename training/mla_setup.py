"""Build the models ``train_mla.py`` trains: the native dual encoder (new or loaded) and MLA's acquisition
model around it (the tasks are built by :func:`tasks.mla.build_mla_tasks`)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from utils.errors import DataError
from model.clip import DualEncoder, DualEncoderConfig
from model.mla import LanguageAcquisition, MLAConfig
from utils.config import ConfigError
from training.mla_config import DualRunConfig

LOG = logging.getLogger("train_mla")
def _read_json(path: str, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{what}: cannot read {path} ({exc})") from None


def load_native(cfg: DualRunConfig) -> DualEncoder:
    """The native dual encoder of an acquisition stage, frozen, from ``cfg.native``."""
    spec = cfg.native
    if not spec.weights:
        raise ConfigError(f"native.weights: stage '{cfg.stage}' needs the trained native model")
    if spec.format == "hf":
        from model.clip_weights import load_hf_folder
        return load_hf_folder(spec.weights)[0]
    if spec.format == "openai":
        from model.clip_weights import load_openai_file
        return load_openai_file(spec.weights, spec.act)[0]
    if not spec.config:
        raise ConfigError("native.config: our model files need their model.json")
    from model.weights import read_state_file
    model = DualEncoder(DualEncoderConfig.from_dict(_read_json(spec.config, "native.config")))
    model.load_state_dict(read_state_file(spec.weights))
    return model


def new_native(cfg: DualRunConfig, feat_dim: int) -> DualEncoder:
    """A freshly initialised native dual encoder (stage 'native'); the region width comes from the data and
    the vocabulary from the tokenizer in ``tokenizer`` (when set), as for UC2's models."""
    if not cfg.native.config:
        raise ConfigError("native.config: stage 'native' needs the architecture (a DualEncoderConfig JSON)")
    mcfg = DualEncoderConfig.from_dict(_read_json(cfg.native.config, "native.config"))
    mcfg.vision.feat_dim = feat_dim
    if cfg.tokenizer:
        from data.tokenizer import load_tokenizer
        mcfg.text.vocab_size = load_tokenizer(cfg.tokenizer).vocab_size
    torch.manual_seed(cfg.seed)
    return DualEncoder(mcfg)


def _vocab_size(cfg: DualRunConfig) -> int:
    if cfg.acquisition.vocab_size:
        return cfg.acquisition.vocab_size
    if not cfg.tokenizer:
        raise ConfigError("acquisition.vocab_size: 0 needs 'tokenizer' (the non-native tokenizer directory)")
    from data.tokenizer import load_tokenizer
    return load_tokenizer(cfg.tokenizer).vocab_size


def embedding_table(folder: str) -> torch.Tensor:
    """The word-embedding table (V, H) of a HF encoder folder (XLM-R / M-BERT), read weights-only."""
    path = Path(folder)
    if (path / "model.safetensors").exists():
        from safetensors.torch import load_file
        state = load_file(str(path / "model.safetensors"))
    else:
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    keys = [k for k in state if k.endswith("embeddings.word_embeddings.weight")]
    if len(keys) != 1:
        raise DataError(f"{folder}: expected one '*embeddings.word_embeddings.weight', found {keys}")
    return state[keys[0]].float()


def build_acquisition(cfg: DualRunConfig, native: DualEncoder) -> LanguageAcquisition:
    """MLA around the frozen ``native``: θ_emb (initialised from ``embedding_init``), acquirers per language;
    with ``init_from``, the earlier stage's parts, and languages new to it added by ``add_language``."""
    opts = cfg.acquisition
    langs = [d.lang for d in cfg.languages]
    earlier = _earlier_languages(opts.init_from) if opts.init_from else langs
    mcfg = MLAConfig(vocab_size=_vocab_size(cfg), embed_width=opts.embed_width, languages=list(earlier),
                     native_lang=cfg.native_lang, eos_id=opts.eos_id, bottleneck=opts.bottleneck,
                     use_acquirers=opts.use_acquirers, zero_init=opts.zero_init)
    torch.manual_seed(cfg.seed)
    model = LanguageAcquisition(native, mcfg)
    if opts.embedding_init and not opts.init_from:
        model.init_embedding(embedding_table(opts.embedding_init))
    if opts.init_from:
        from model.weights import read_state_file
        missing, unexpected = model.load_state_dict(read_state_file(opts.init_from), strict=False)
        if unexpected or [k for k in missing if not k.startswith("native.")]:
            raise DataError(f"{opts.init_from}: does not fit the acquisition model (unexpected {unexpected[:5]})")
        for lang in langs:
            if lang not in model.acquirers:
                model.add_language(lang)
        # Languages of init_from left out of this run stay frozen, and so does θ_emb unless train_embedding:
        # then they stay bitwise unchanged (MLA_FACTS §5.4). The mode is in hps.json.
        model.set_trainable(langs, opts.train_embedding)
        LOG.info(f"training acquirers of {langs}; shared embedding {'trained' if opts.train_embedding else 'frozen'}")
    return model


def _earlier_languages(path: str) -> list[str]:
    """Languages with acquirers in an acquisition weights file (``acquirers.<lang>.<i>...`` keys)."""
    from model.weights import read_state_file
    langs = {k.split(".")[1] for k in read_state_file(path) if k.startswith("acquirers.")}
    return sorted(langs)
