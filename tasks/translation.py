"""(Multimodal) machine translation as a task of the shared trainer: MMT (text + regions) or NMT (text).

Data: a parallel txt_db (``prepro.py multi30k``: per example both sides' ids, word2ids, raw text, the two
languages and the image). The direction is chosen by language name (``src_lang``/``tgt_lang``), never by
side order, so en->de, en->fr and de->en all work (the seed only worked when the source sorted after the
target, MMT_FACTS §10.1).

Source ``<s> src </s>`` (XLM-R positions from 2), target ``<s> tgt </s>``; the loss is the mean token
cross-entropy of ``tgt[1:]`` given ``tgt[:-1]`` (no label smoothing). A :class:`Degradation` masks source
words at train and test time (entity nouns / colour words: a word from a list becomes one [MASK];
progressive: every word after the first k). An image permutation (``image_of``) gives each sentence another
sentence's image (the incongruent-image probe). Validation decodes with beam search and reports BLEU.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from data.collate import pad_sequences
from utils.errors import DataError
from tasks.base import ExampleSource, Objective, PretrainTask, TaskConfig, text_example
from tasks.vtlmc import collate_xlm
from utils.device import move_to_device

DEGRADE_MODES = ("none", "words", "progressive")


@dataclass(frozen=True)
class Degradation:
    """How the source is degraded (at train and test time alike)."""

    mode: str = "none"
    """"none"; "words" (each word in ``words`` -> [MASK]); "progressive" (words after the first k -> [MASK])."""
    words: frozenset[str] = frozenset()
    """Lower-cased source words masked in "words" mode (e.g. entity nouns, colour words)."""
    keep_first: int = 0
    """Progressive masking: number of leading source words kept."""

    def __post_init__(self) -> None:
        if self.mode not in DEGRADE_MODES:
            raise ValueError(f"degradation mode must be one of {DEGRADE_MODES}, got {self.mode!r}")

    def masked(self, words: Sequence[str]) -> list[bool]:
        """Per source word: is it masked?"""
        if self.mode == "words":
            return [w.lower() in self.words for w in words]
        if self.mode == "progressive":
            return [k >= self.keep_first for k in range(len(words))]
        return [False] * len(words)


def degrade_ids(ids: Sequence[int], word2ids: Sequence[Sequence[int]], masked: Sequence[bool], mask_id: int
                ) -> list[int]:
    """Source ids with every masked word's sub-tokens replaced by a single ``mask_id``."""
    drop = {p for w, hide in enumerate(masked) if hide for p in word2ids[w]}
    first = {min(word2ids[w]) for w, hide in enumerate(masked) if hide and len(word2ids[w])}
    return [mask_id if p in first else t for p, t in enumerate(ids) if p not in drop or p in first]


@dataclass(frozen=True)
class TranslationSpec:
    """What one translation task translates and how."""

    src_lang: str
    tgt_lang: str
    use_images: bool = True
    degradation: Degradation = field(default_factory=Degradation)
    image_of: tuple[int, ...] | None = None
    """Incongruent images: example i is shown the image of example image_of[i]."""


def _side(fields: dict, lang: str, txt_id: str) -> str:
    for side in ("lang1", "lang2"):
        if fields.get(side) == lang:
            return side[-1]
    raise DataError(f"txt_db example {txt_id}: no side in language {lang!r} (it pairs "
                    f"{fields.get('lang1')!r} and {fields.get('lang2')!r})")


class TranslationObjective(Objective):
    """Builds translation examples and batches; the loss is the encoder-decoder's token cross-entropy."""

    def __init__(self, spec: TranslationSpec):
        super().__init__(TaskConfig(task="translation"))
        self.spec = spec

    def build_example(self, source: ExampleSource, index: int, rng: np.random.Generator) -> dict:
        record = source.text(index)
        fields, meta = record.fields, record.meta
        s, t = _side(fields, self.spec.src_lang, record.txt_id), _side(fields, self.spec.tgt_lang, record.txt_id)
        words = fields.get(f"raw_lang{s}", "").split()
        word2ids = fields.get(f"word2ids_lang{s}", [])
        if len(words) != len(word2ids):
            raise DataError(f"txt_db example {record.txt_id}: raw_lang{s} has {len(words)} words but "
                            f"word2ids_lang{s} {len(word2ids)} (build it with prepro.py multi30k)")
        masked = self.spec.degradation.masked(words)
        src = degrade_ids(fields[f"input_ids_lang{s}"], word2ids, masked, meta["MASK"])
        wrap = lambda ids: torch.tensor([meta["CLS"], *ids, meta["SEP"]], dtype=torch.long)  # noqa: E731
        example = text_example(wrap(src), self._image(source, record, index))
        example.update(tgt=wrap(fields[f"input_ids_lang{t}"]), ref=fields.get(f"raw_lang{t}", ""),
                       src_text=" ".join(words), masked_words=[w for w, m in zip(words, masked) if m],
                       side_ids=torch.zeros(len(src) + 2, dtype=torch.long), pair_langs=(self.spec.src_lang,),
                       index=index)
        return example

    def _image(self, source: ExampleSource, record, index: int) -> dict:
        fname = record.fields["img_fname"]
        if self.spec.image_of is not None:
            fname = source.text(self.spec.image_of[index]).fields["img_fname"]
        image = source.image(record.part, fname)
        if not self.spec.use_images:  # NMT: no regions (keeps the feature width for the UC2 collate)
            image = {k: v[:0] for k, v in image.items()}
        return image

    def collate(self, examples: list[dict]) -> dict:
        """``src`` (backbone keys + the XLM encoder's ``txt_mask``, ``side_ids``, ``pair_langs``,
        ``img_valid``), ``tgt`` (B, T) padded with 1, and per-example ``refs``, ``masked_words``, ``index``."""
        return {"src": collate_xlm(examples), "tgt": pad_sequences([ex["tgt"] for ex in examples]),
                "refs": [ex["ref"] for ex in examples], "masked_words": [ex["masked_words"] for ex in examples],
                "src_texts": [ex["src_text"] for ex in examples], "index": [ex["index"] for ex in examples]}

    def compute_loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss, n_tokens = model.loss(batch["src"], batch["tgt"])
        return loss, {"loss": loss.item(), "n_tokens": float(n_tokens)}


class TranslationTask(PretrainTask):
    """The TrainTask of MMT/NMT fine-tuning; validation translates the val split and reports BLEU."""

    def __init__(self, *args, decode: Callable[[list[int]], str], search, **kwargs):
        super().__init__(*args, **kwargs)
        self.decode, self.search = decode, search

    def translate(self, model, data=None, sampler=None) -> dict[str, list]:
        """Hypotheses of a split (default: validation) in example order, with refs, sources, masked words."""
        from model.generation import generate
        from utils import distributed as du

        data, sampler = data or self.val_data, sampler or self.val_sampler
        rows = []
        for batch in self._loader(data, sampler):
            hyps = generate(model, move_to_device(batch["src"], self.options.device), self.search)
            texts = [self.decode(h.tokens) for h in hyps]
            rows += zip(batch["index"], texts, batch["refs"], batch["src_texts"], batch["masked_words"])
        rows = sorted({r[0]: r for part in du.all_gather_object(rows) for r in part}.values())
        keys = ("index", "hyps", "refs", "srcs", "masked_words")
        return {k: [r[i] for r in rows] for i, k in enumerate(keys)}

    @torch.no_grad()
    def validate(self, model) -> dict[str, float]:
        """``bleu`` (the seed's bleu_tok definition) and ``chrf`` of beam search on the validation split."""
        from utils.mt_metrics import translation_scores

        if self.val_data is None:
            return {}
        out = self.translate(model)
        scores = translation_scores(out["hyps"], out["refs"], self.objective.spec.tgt_lang, with_meteor=False)
        return {"bleu": scores["bleu_tok"].score, "chrf": scores["chrf"].score}
