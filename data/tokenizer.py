"""XLM-R tokenizer access, offline, and training of small SentencePiece tokenizers in the same id layout.

Id layout (fairseq / XLM-R, what UC2 txt_dbs store)::

    <s> 0 (CLS)   <pad> 1   </s> 2 (SEP)   <unk> 3   normal pieces 4 ..   <mask> = last id

Hugging Face builds this layout from a SentencePiece model whose own ids are ``<unk> 0, <s> 1, </s> 2``:
every normal piece gets its SentencePiece id + 1 and ``<mask>`` is appended at the end.
``train_sentencepiece_tokenizer`` trains such a model so that tiny demo/test tokenizers behave exactly like
the real XLM-R one.

Text is tokenised through the tokenizer's own normalizer, pre-tokenizer and Unigram model, but *not* its
added-token matcher, so a caption that literally contains ``<mask>`` or ``</s>`` never turns into special
ids (``input_ids`` in a txt_db must hold no special tokens).
"""
from __future__ import annotations

import functools
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from utils.atomic import atomic_dir
from utils.errors import DataError

SPM_FILE = "sentencepiece.bpe.model"
HF_TOKENIZER_FILE = "tokenizer.json"
# The fixed head of the XLM-R vocabulary: (token, id).
XLMR_SPECIALS = (("<s>", 0), ("<pad>", 1), ("</s>", 2), ("<unk>", 3))
FIRST_NORMAL_ID = 4
DEFAULT_NO_SPACE_LANGS = frozenset({"ja", "zh"})
_MAX_LEN = 512  # XLM-R positions; only informs HF, we never truncate here


@dataclass(frozen=True)
class UC2Tokenizer:
    """Thin wrapper over a Hugging Face XLM-R tokenizer exposing the ids UC2 needs.

    Attributes:
        path: the directory it was loaded from.
        hf: the underlying ``transformers`` tokenizer (fast, ``tokenizers`` backend).
    """

    path: Path
    hf: object

    @property
    def cls_id(self) -> int:
        return self.hf.cls_token_id

    @property
    def sep_id(self) -> int:
        return self.hf.sep_token_id

    @property
    def pad_id(self) -> int:
        return self.hf.pad_token_id

    @property
    def unk_id(self) -> int:
        return self.hf.unk_token_id

    @property
    def mask_id(self) -> int:
        return self.hf.mask_token_id

    @property
    def vocab_size(self) -> int:
        """Number of ids, ``<mask>`` included (250002 for XLM-R base)."""
        return len(self.hf)

    @property
    def name(self) -> str:
        """Name recorded in txt_db meta.json (``bert`` key): the tokenizer folder's name."""
        return self.path.name

    def _pieces(self, text: str) -> list[str]:
        """Normalise and pre-tokenise ``text``: whitespace-split words, each with its leading ``▁``."""
        backend = self.hf.backend_tokenizer
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        if backend.pre_tokenizer is None:
            return [text] if text else []
        return [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text)]

    def _model_ids(self, piece: str) -> list[int]:
        """Unigram ids of one already pre-tokenised piece (no normalisation).

        The HF Unigram vocabulary holds the special tokens, so a literal ``<s>``/``</s>``/``<pad>``/``<mask>``
        in the text would match them (SentencePiece itself never emits control symbols); such matches become
        ``<unk>`` so that stored ids never contain special tokens.
        """
        special = (self.cls_id, self.pad_id, self.sep_id, self.mask_id)
        ids = [tok.id for tok in self.hf.backend_tokenizer.model.tokenize(piece)]
        return [self.unk_id if i in special else i for i in ids]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens, e.g. ``[8, 51, 52]`` for "a man riding".

        Same ids as ``hf.encode(text, add_special_tokens=False)`` for text without literal special-token
        strings (those become ``<unk>`` here, see ``_model_ids``).
        """
        ids: list[int] = []
        for piece in self._pieces(text):
            ids.extend(self._model_ids(piece))
        return ids

    def encode_words(self, words: Sequence[str], lang: str,
                     no_space_langs: Iterable[str] = DEFAULT_NO_SPACE_LANGS,
                     ) -> tuple[list[int], list[list[int]]]:
        """Tokenise pre-split words so that each word's sub-tokens are known exactly.

        Languages written with spaces: every word is tokenised as it is after a space (leading ``▁``), which is
        what tokenising ``" ".join(words)`` gives, because XLM-R splits on whitespace before the Unigram model.
        No-space languages (ja, zh by default; the words come from a segmenter for the aligner): the first word
        gets the leading ``▁`` and later words none, so the ids match tokenising the unsegmented sentence except
        where the Unigram model would have merged characters across a segmenter boundary.

        Returns:
            ids: all sub-token ids (no specials), length T.
            word2ids: for each word, the positions (0..T-1) of its sub-tokens in ``ids``; a word that normalises
            to nothing gets an empty list.
        """
        no_space = lang in set(no_space_langs)
        ids: list[int] = []
        word2ids: list[list[int]] = []
        for index, word in enumerate(words):
            if no_space and index > 0:
                word_ids = self._encode_no_prefix(word)
            else:
                word_ids = self.encode(word)
            word2ids.append(list(range(len(ids), len(ids) + len(word_ids))))
            ids.extend(word_ids)
        return ids, word2ids

    def _encode_no_prefix(self, word: str) -> list[int]:
        """Ids of ``word`` as a continuation of the previous word (no ``▁`` in front)."""
        backend = self.hf.backend_tokenizer
        text = backend.normalizer.normalize_str(word) if backend.normalizer is not None else word
        # Inner spaces of a segmented "word" still become ▁ as they would in running text.
        return self._model_ids("▁".join(text.split()))

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return self.hf.convert_ids_to_tokens(list(ids))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)


def _check_dir(path: Path) -> None:
    if not path.is_dir():
        raise DataError(f"tokenizer folder {path} does not exist; expected a directory holding "
                        f"{HF_TOKENIZER_FILE} or {SPM_FILE} (Hugging Face XLM-R layout)")
    if not (path / HF_TOKENIZER_FILE).is_file() and not (path / SPM_FILE).is_file():
        found = sorted(p.name for p in path.iterdir())[:10]
        raise DataError(f"tokenizer folder {path} has neither {HF_TOKENIZER_FILE} nor {SPM_FILE} "
                        f"(found: {found or 'nothing'})")


def _check_layout(tok: UC2Tokenizer) -> None:
    """Refuse tokenizers whose ids do not follow XLM-R (UC2 data and weights assume it)."""
    got = {name: tok.hf.convert_tokens_to_ids(name) for name, _ in XLMR_SPECIALS}
    want = dict(XLMR_SPECIALS)
    if got != want or tok.mask_id != tok.vocab_size - 1:
        raise DataError(f"tokenizer in {tok.path} does not have the XLM-R id layout: expected {want} and "
                        f"<mask> = last id ({tok.vocab_size - 1}), got {got} and <mask> = {tok.mask_id}")


@functools.lru_cache(maxsize=8)
def _load_cached(resolved: str) -> UC2Tokenizer:
    # Imported here: transformers is slow to import and nothing may do work at import time.
    from transformers import XLMRobertaTokenizer

    path = Path(resolved)
    _check_dir(path)
    spm_size = _spm_size(path / SPM_FILE) if (path / SPM_FILE).is_file() else None
    try:
        hf = XLMRobertaTokenizer.from_pretrained(resolved, local_files_only=True, model_max_length=_MAX_LEN)
    except (OSError, ValueError, RuntimeError, ImportError, KeyError, TypeError) as err:
        raise DataError(f"could not load the tokenizer in {path}: {err}") from err
    tok = UC2Tokenizer(path=path, hf=hf)
    _check_layout(tok)
    # transformers may silently fall back to another vocabulary; the sizes must agree with the model file.
    if spm_size is not None and tok.vocab_size != spm_size + 2:
        raise DataError(f"tokenizer in {path} has {tok.vocab_size} ids but {SPM_FILE} has {spm_size} pieces "
                        f"(expected pieces + 2: <pad> and <mask>); are tokenizer.json and the model file from "
                        f"different tokenizers?")
    return tok


def _spm_size(model_file: Path) -> int:
    """Number of pieces of a SentencePiece model file; DataError if it is not one."""
    import sentencepiece as spm

    try:
        return spm.SentencePieceProcessor(model_file=str(model_file)).get_piece_size()
    except (OSError, RuntimeError) as err:
        raise DataError(f"{model_file} is not a readable SentencePiece model ({err})") from err


def load_tokenizer(path: str | os.PathLike) -> UC2Tokenizer:
    """Load an XLM-R style tokenizer from a local folder (HF layout, or a folder with ``sentencepiece.bpe.model``).

    Offline; cached per resolved path, so repeated calls are cheap.
    Raises:
        DataError: missing folder, no tokenizer file, or ids not in the XLM-R layout.
    """
    return _load_cached(str(Path(path).expanduser().resolve()))


def _train_spm_bytes(texts: Iterable[str], vocab_size: int, seed: int, word_delimiter: str | None = None) -> bytes:
    """Train a Unigram SentencePiece model in memory; returns the serialized model."""
    import sentencepiece as spm

    # Unigram training is deterministic on one thread; the seed only matters for sentencepiece's sampling paths.
    spm.set_random_generator_seed(seed)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(t for t in texts if t.strip()), model_writer=buf,
        vocab_size=vocab_size, model_type="unigram", character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,  # HF adds <pad> and the +1 offset: XLM-R's fairseq layout
        hard_vocab_limit=False, num_threads=1, minloglevel=2,
        **({"pretokenization_delimiter": word_delimiter} if word_delimiter else {}))
    return buf.getvalue()


def _verify_trained(directory: Path, model_bytes: bytes, probe: Sequence[str]) -> None:
    """Check that HF loads the folder with ids = SentencePiece id + 1 and <mask> last."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    tok = _load_cached.__wrapped__(str(directory))  # uncached: the folder is still a temp dir
    if tok.vocab_size != sp.get_piece_size() + 2:
        raise DataError(f"trained tokenizer in {directory}: HF vocab {tok.vocab_size} != "
                        f"SentencePiece {sp.get_piece_size()} + 2")
    for text in probe:
        if tok.encode(text) != [i + 1 for i in sp.encode(text)]:
            raise DataError(f"trained tokenizer in {directory}: HF ids differ from SentencePiece ids + 1 "
                            f"on {text!r}")


def train_sentencepiece_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int,
                                  seed: int = 0, overwrite: bool = False, word_delimiter: str | None = None) -> Path:
    """Train a small XLM-R-layout tokenizer (Unigram, full character coverage so ja/zh work).

    Writes ``sentencepiece.bpe.model`` plus the HF files (``tokenizer.json``, ``tokenizer_config.json``) into
    ``out_dir`` atomically. ``vocab_size`` is the SentencePiece size (a soft limit: small corpora give fewer);
    the final vocabulary has two more ids (``<pad>``, ``<mask>``). Deterministic for the same input.
    ``word_delimiter``: a character that marks word boundaries in ``texts`` (for text written without spaces);
    no piece spans it and it is removed before training, so it never appears in the vocabulary.
    Returns the output directory.
    """
    from transformers import XLMRobertaTokenizer

    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not overwrite:
        raise DataError(f"tokenizer output {out} already exists (pass overwrite=True to replace it)")
    texts = list(texts)
    if not any(t.strip() for t in texts):
        raise DataError(f"no non-empty text to train the tokenizer in {out} on")
    try:
        model_bytes = _train_spm_bytes(texts, vocab_size, seed, word_delimiter)
    except RuntimeError as err:  # sentencepiece reports bad settings (e.g. vocab below the alphabet) this way
        raise DataError(f"SentencePiece training for {out} failed: {err}") from err
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / SPM_FILE).write_bytes(model_bytes)
        hf = XLMRobertaTokenizer.from_pretrained(str(tmp), local_files_only=True, model_max_length=_MAX_LEN)
        hf.save_pretrained(str(tmp))
        probe = [t.replace(word_delimiter, "") if word_delimiter else t for t in texts[:20]]
        _verify_trained(tmp, model_bytes, probe)
    _load_cached.cache_clear()  # a replaced folder must not be served from the cache
    return out
