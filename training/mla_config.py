"""Run config of dual-encoder training (``train_mla.py``): the native English dual encoder, and MLA's stages.

``stage``: "native" trains a dual encoder on captions (all parameters, learned temperature); "nlt", "le" and
"nlt+le" train MLA's acquisition parts on a FROZEN native model (loaded from ``native.weights``). Each
language of ``languages`` becomes one task per objective (``nlt_de``, ``le_de`` ...), drawn uniformly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from utils.config import ConfigError, field
from training.itm_config import RetrievalSetSpec
from training.run_config import TrainConfig


@dataclass
class LanguageData:
    """The data of one language."""

    lang: str = field(help="language code, e.g. 'de'; the native language for stage 'native'")
    paired_db: str = field("", help="NLT: paired txt_db of native-X sentence pairs (prepro.py paired / tsv)")
    val_paired_db: str = field("", help="NLT validation pairs (optional)")
    caption_db: str = field("", help="LE / native: caption txt_db of this language (img_fname per caption)")
    val_caption_db: str = field("", help="LE / native validation captions: AR every valid_steps (optional)")


@dataclass
class NativeModelSpec:
    """The native (English) dual encoder."""

    config: str = field("", help="DualEncoderConfig JSON (a run's model.json); stage 'native' builds it")
    weights: str = field("", help="native weights: our model file, a HF CLIPModel folder or an OpenAI state dict")
    format: Literal["ours", "hf", "openai"] = field("ours", help="format of 'weights'")
    act: Literal["quick_gelu", "gelu"] = field("quick_gelu", help="activation of OpenAI weights (QuickGELU "
                                                                  "for OpenAI's own; a wrong one gives no error)")


@dataclass
class AcquisitionOptions:
    """MLA's parts (model/mla.py)."""

    vocab_size: int = field(0, help="non-native vocabulary; 0 = the size of the tokenizer in 'tokenizer'")
    embed_width: int = field(768, help="width of the non-native embedding table (M-BERT 768)")
    bottleneck: int = field(0, help="acquirer hidden size; 0 = half the text width")
    use_acquirers: bool = field(True, help="False: the 'w/o LA' ablation (non-native embedding only)")
    zero_init: bool = field(False, help="zero the acquirers' up-projections (MLA trains from default init)")
    eos_id: int = field(2, help="end-of-text id of the non-native tokenizer (</s> = 2 in the XLM-R layout)")
    embedding_init: str = field("", help="HF folder whose word embeddings initialise the non-native table "
                                         "(M-BERT / the demo's tiny XLM-R); empty: N(0, 0.02), 'w/o EI'")
    init_from: str = field("", help="acquisition weights of an earlier stage (LE starts from NLT)")
    train_embedding: bool = field(True, help="when 'languages' adds languages to init_from: train the shared "
                                             "embedding too (others drift) or freeze it (others stay bitwise)")


@dataclass
class DualRunConfig(TrainConfig):
    """Native dual-encoder training or an MLA stage, then the test-set table."""

    stage: Literal["native", "nlt", "le", "nlt+le"] = field("nlt", help="what to train (module docstring)")
    native_lang: str = field("en", help="the native model's language: it never takes acquirers")
    languages: list[LanguageData] = field(default_factory=list, help="data per trained language")
    img_db: str = field("", help="img_db of the captions' images (region features)")
    native: NativeModelSpec = field(default_factory=NativeModelSpec, help="the native dual encoder")
    acquisition: AcquisitionOptions = field(default_factory=AcquisitionOptions, help="MLA's parts")
    batch_size: int = field(128, help="examples (pairs or images) per GPU per micro-batch")
    le_temperature: float = field(0.01, help="LE's FIXED temperature (MLA: 0.01); <= 0: the native model's "
                                             "learned one, frozen")
    max_txt_len: int = field(77, help="text positions incl. <s> and </s> (truncation keeps </s> last)")
    test_datasets: list[RetrievalSetSpec] = field(default_factory=list, help="sets evaluated after training")
    setting: str = field("MLA (NLT -> LE)", help="row label of the results table")
    results_dir: str = field("", help="where results.md/.json go; empty: {output_dir}/results")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.languages:
            raise ConfigError("languages: expected at least one language")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size: expected >= 2 (in-batch negatives), got {self.batch_size}")
        if self.stage == "native" and any(d.lang != self.native_lang for d in self.languages):
            raise ConfigError(f"languages: stage 'native' trains the {self.native_lang} model only")
        if self.stage != "native" and any(d.lang == self.native_lang for d in self.languages):
            raise ConfigError(f"languages: {self.native_lang} is the frozen native language, it takes no acquirers")
        need = {"native": ("caption_db",), "nlt": ("paired_db",), "le": ("caption_db",),
                "nlt+le": ("paired_db", "caption_db")}[self.stage]
        for i, data in enumerate(self.languages):
            for key in need:
                if not getattr(data, key):
                    raise ConfigError(f"languages[{i}].{key}: required by stage '{self.stage}' ({data.lang})")
