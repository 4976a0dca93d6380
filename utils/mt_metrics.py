"""Machine-translation metrics: the two named BLEUs, chrF, METEOR 1.5 (where its jar runs), text helpers.

Definitions (MMT facts sheet §8; never compare numbers across definitions):

* ``bleu_tok`` (the VTLM seed's): ``sacrebleu.corpus_bleu(hyps, [refs], tokenize='none')`` (default
  exponential smoothing) on the "tok form" of both sides: BPE merged by the regex ``(@@ )|(@@ ?$)``,
  punctuation-normalised, Moses-tokenised without escaping, lowercased and accent-stripped. A reference
  ``<unk>`` is written ``<<unk>>`` (:func:`mark_unknown`), so it never matches a hypothesis token.
* ``bleu_detok``: sacreBLEU with its standard ``13a`` tokenizer on detokenised output (cased when the model
  produces case); the signature is returned with the score, and should be printed with it.
* ``chrf``: sacreBLEU chrF (character 6-grams, beta 2) on the same detokenised text as ``bleu_detok``.
* METEOR 1.5: ``java -Xmx2G -jar meteor-1.5.jar HYP REF -l LANG`` on the tok form, x100. The jar shipped by
  the ``pycocoevalcap`` package carries only the English paraphrase table, so for other target languages it
  runs with the ``exact stem`` modules and the result is named ``meteor_exact_stem_<lang>`` (a different
  number from the published METEOR with paraphrases); English gets the full ``meteor`` (exact, stem,
  synonym, paraphrase). Without Java or the jar, :func:`meteor` returns a result with ``score=None`` and
  the reason: never a substitute metric.

:func:`translation_scores` computes all of them from raw hypothesis/reference strings.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import sacrebleu
from sacrebleu.metrics import BLEU, CHRF

BPE_MERGE = re.compile(r"(@@ )|(@@ ?$)")
UNK, UNK_REF = "<unk>", "<<unk>>"
# Meteor 1.5 "fully supported" languages (the others would use language-independent parameters).
_METEOR_LANGS = ("en", "cz", "de", "es", "fr")


@dataclass(frozen=True)
class MetricResult:
    """A corpus-level score (0-100) under a named definition; ``score`` None = not computed (``note`` why)."""

    name: str
    score: float | None
    signature: str = ""
    note: str = ""


def merge_bpe(text: str) -> str:
    """Undo fastBPE/subword-nmt segmentation: ``"Man@@ n rei@@ tet@@"`` -> ``"Mann reitet"``."""
    return BPE_MERGE.sub("", text)


def normalise(text: str) -> str:
    """Lowercase and strip accents (NFD, drop combining marks, category Mn): "Über Straße" -> "uber straße"."""
    return "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")


def mark_unknown(text: str, unk: str = UNK) -> str:
    """Write each reference token ``unk`` as ``<<unk>>`` so that it can never match a hypothesis token."""
    return " ".join(UNK_REF if tok == unk else tok for tok in text.split(" "))


def _moses(lang: str):
    """(punctuation normaliser, tokenizer, detokenizer) for ``lang`` (sacremoses, imported on first use)."""
    from sacremoses import MosesDetokenizer, MosesPunctNormalizer, MosesTokenizer

    return MosesPunctNormalizer(lang=lang), MosesTokenizer(lang=lang), MosesDetokenizer(lang=lang)


def tok_form(texts: Sequence[str], lang: str) -> list[str]:
    """The seed's evaluation form of raw (or BPE) sentences: merge BPE, normalise punctuation, Moses-tokenise
    without escaping, lowercase and strip accents."""
    punct, tokenizer, _ = _moses(lang)

    def one(text: str) -> str:
        # <unk> stays one token (Moses would split it into "< unk >", which could match real "<" tokens).
        parts = [tokenizer.tokenize(punct.normalize(p), escape=False, return_str=True) for p in text.split(UNK)]
        return " ".join(normalise(f" {UNK} ".join(parts)).split())

    return [one(merge_bpe(t)) for t in texts]


def detok_form(texts: Sequence[str], lang: str) -> list[str]:
    """Merge BPE and Moses-detokenise (text that is already raw comes back unchanged but for spacing)."""
    _, _, detokenizer = _moses(lang)
    return [detokenizer.detokenize(merge_bpe(t).split()) for t in texts]


def _check_pairs(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references: they must be aligned 1:1")
    if not hyps:
        raise ValueError("no hypotheses to score")


def bleu_tok(hyps: Sequence[str], refs: Sequence[str]) -> MetricResult:
    """The seed's BLEU on strings already in tok form (:func:`tok_form`, refs through :func:`mark_unknown`)."""
    _check_pairs(hyps, refs)
    metric = BLEU(tokenize="none")
    score = metric.corpus_score(list(hyps), [list(refs)]).score
    return MetricResult("bleu_tok", score, metric.get_signature().format())


def bleu_detok(hyps: Sequence[str], refs: Sequence[str]) -> MetricResult:
    """sacreBLEU 13a on detokenised strings (:func:`detok_form`); the signature names the definition."""
    _check_pairs(hyps, refs)
    metric = BLEU(tokenize="13a")
    score = metric.corpus_score(list(hyps), [list(refs)]).score
    return MetricResult("bleu_detok", score, metric.get_signature().format())


def chrf(hyps: Sequence[str], refs: Sequence[str]) -> MetricResult:
    """sacreBLEU chrF on detokenised strings."""
    _check_pairs(hyps, refs)
    metric = CHRF()
    score = metric.corpus_score(list(hyps), [list(refs)]).score
    return MetricResult("chrf", score, metric.get_signature().format())


def find_meteor_jar() -> Path | None:
    """``$METEOR_JAR``, else the ``meteor-1.5.jar`` the pycocoevalcap package ships, else None."""
    env = os.environ.get("METEOR_JAR")
    if env:
        return Path(env) if Path(env).is_file() else None
    try:
        import pycocoevalcap  # noqa: PLC0415 - optional dependency, only located, never imported at load
    except ImportError:
        return None
    jar = Path(pycocoevalcap.__path__[0]) / "meteor" / "meteor-1.5.jar"
    return jar if jar.is_file() else None


def meteor_modules(jar: Path, lang: str) -> tuple[str, str]:
    """(result name, modules) for ``lang`` given the resources beside ``jar`` (see the module docstring)."""
    if (jar.parent / "data" / f"paraphrase-{lang}.gz").is_file():
        return "meteor", "exact stem synonym paraphrase" if lang == "en" else "exact stem paraphrase"
    return f"meteor_exact_stem_{lang}", "exact stem"


def meteor(hyps: Sequence[str], refs: Sequence[str], lang: str, timeout: float = 600.0) -> MetricResult:
    """METEOR 1.5 x100 from the jar (tok-form inputs), or ``score=None`` with the reason it could not run."""
    _check_pairs(hyps, refs)
    java, jar = shutil.which("java"), find_meteor_jar()
    if java is None or jar is None:
        missing = "java" if java is None else "meteor-1.5.jar (pip install pycocoevalcap, or set METEOR_JAR)"
        return MetricResult("meteor", None, note=f"not computed: {missing} not found")
    if lang not in _METEOR_LANGS:
        return MetricResult("meteor", None, note=f"not computed: Meteor 1.5 does not fully support {lang!r}")
    name, modules = meteor_modules(jar, lang)
    with tempfile.TemporaryDirectory() as tmp:
        hyp_file, ref_file = Path(tmp) / "hyp", Path(tmp) / "ref"
        hyp_file.write_text("".join(h.replace("\n", " ") + "\n" for h in hyps), encoding="utf-8")
        ref_file.write_text("".join(r.replace("\n", " ") + "\n" for r in refs), encoding="utf-8")
        cmd = [java, "-Xmx2G", "-jar", str(jar), str(hyp_file), str(ref_file), "-l", lang, "-m", modules, "-q"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return MetricResult(name, None, note=f"not computed: meteor exited {proc.returncode}: {proc.stderr[-300:]}")
    signature = f"meteor-1.5|jar:{jar.name}|lang:{lang}|modules:{modules.replace(' ', '+')}"
    return MetricResult(name, 100.0 * float(lines[-1]), signature)


def translation_scores(hyps: Sequence[str], refs: Sequence[str], lang: str,
                       with_meteor: bool = True) -> dict[str, MetricResult]:
    """All metrics from raw (or BPE) hypothesis and reference sentences in target language ``lang``.

    Each side is put in the tok form (``bleu_tok``, METEOR) and the detok form (``bleu_detok``, chrF);
    reference ``<unk>`` tokens become ``<<unk>>`` in the tok form.
    """
    _check_pairs(hyps, refs)
    hyp_tok, ref_tok = tok_form(hyps, lang), [mark_unknown(r) for r in tok_form(refs, lang)]
    hyp_detok, ref_detok = detok_form(hyps, lang), detok_form(refs, lang)
    results = [bleu_tok(hyp_tok, ref_tok), bleu_detok(hyp_detok, ref_detok), chrf(hyp_detok, ref_detok)]
    if with_meteor:
        results.append(meteor(hyp_tok, ref_tok, lang))
    return {r.name: r for r in results}


def sacrebleu_version() -> str:
    """Version of the sacreBLEU that computed the scores (also inside every signature)."""
    return sacrebleu.__version__
