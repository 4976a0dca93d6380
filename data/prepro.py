"""Preprocessing: raw JSON-lines files -> txt_dbs (captions, VQA, paired captions for VTLM).

Every builder is a plain function returning a summary dict (the CLI ``prepro.py`` prints it; the demo
corpus builder calls the functions directly). Inputs are validated line by line: a malformed line raises
``DataError`` naming the file and line number; outputs are written through ``TxtDbWriter``, which builds in
a temp dir and renames at the end, so an error leaves nothing behind.

Input formats (one JSON object per line; blank lines are ignored):
    captions: {"id", "img_fname", "lang", "caption"}
    vqa:      {"question_id", "img_fname", "lang", "question", "answers": [str, ...]}
    paired:   {"id", "img_fname", "lang1", "lang2", "caption1", "caption2"} plus a Pharaoh alignment file,
              one line per JSON line ("0-1 2-3", word i of caption1 aligned to word j of caption2; words =
              whitespace split; ja/zh captions come pre-segmented with spaces).
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from utils.atomic import atomic_write_json
from utils.errors import DataError
from data.lmdb_env import open_lmdb
from data.tokenizer import DEFAULT_NO_SPACE_LANGS, FIRST_NORMAL_ID, UC2Tokenizer, load_tokenizer
from data.txt_db import TxtDbWriter

DEFAULT_MAX_TXT_LEN = 60  # training drops longer examples (UC2 recipe); evaluation keeps them
DEFAULT_NUM_ANSWERS = 3129  # VQA v2 answer vocabulary size used by UNITER/UC2
CAPTION_FIELDS = ("id", "img_fname", "lang", "caption")
VQA_FIELDS = ("question_id", "img_fname", "lang", "question", "answers")
PAIRED_FIELDS = ("id", "img_fname", "lang1", "lang2", "caption1", "caption2")
TokenizerLike = UC2Tokenizer | str | os.PathLike
_LANG_RE = re.compile(r"[A-Za-z0-9_-]+")


# ----------------------------------------------------------------------------------------------- reading
def iter_jsonl(path: str | os.PathLike, required: Sequence[str]) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, row)`` for each non-blank line (numbers start at 1), checking ``required`` keys."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"input file {path} does not exist")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = _decode_line(raw, path, lineno)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [key for key in required if key not in row]
            if missing:
                raise DataError(f"{path}, line {lineno}: missing field {missing[0]!r} "
                                f"(expected fields: {', '.join(required)})")
            yield lineno, row


def _decode_line(raw: bytes, path: Path, lineno: int) -> str:
    # Decoded per line (not by the file object) so that bad bytes are reported with their line number.
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}, line {lineno}: not valid UTF-8 ({err.reason} at byte {err.start})") from None


def _text(row: dict, key: str, path: Path, lineno: int) -> str:
    """The string field ``key``, stripped; DataError when it is not a string."""
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"{path}, line {lineno}: field {key!r} must be a string, got {type(value).__name__}")
    return value.strip()


def _example_id(row: dict, key: str, path: Path, lineno: int) -> str:
    value = row[key]
    if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value) == "":
        raise DataError(f"{path}, line {lineno}: field {key!r} must be a non-empty string or integer, got {value!r}")
    return str(value)


def load_img_names(img_db: str | os.PathLike) -> frozenset[str]:
    """Image keys of an img_db folder: from its ``nbb_*.json`` or, failing that, an LMDB's ``__keys__`` entry."""
    root = Path(img_db)
    if not root.is_dir():
        raise DataError(f"img_db {root} does not exist")
    nbb_files = sorted(root.glob("nbb_*.json"))
    if nbb_files:  # every nbb file of one img_db lists the same images
        try:
            return frozenset(json.loads(nbb_files[0].read_text(encoding="utf-8")))
        except json.JSONDecodeError as err:
            raise DataError(f"{nbb_files[0]}: malformed JSON ({err.msg})") from None
    for sub in sorted(p.parent for p in root.glob("*/data.mdb")):
        names = _lmdb_keys(sub)
        if names is not None:
            return names
    raise DataError(f"img_db {root} has no nbb_*.json file and no LMDB with a __keys__ entry")


def _lmdb_keys(lmdb_dir: Path) -> frozenset[str] | None:
    # Through the per-process cache: LMDB refuses a second handle on an environment this process holds.
    with open_lmdb(lmdb_dir, readonly=True).begin() as txn:
        raw = txn.get(b"__keys__")
    return None if raw is None else frozenset(json.loads(bytes(raw).decode("utf-8")))


# --------------------------------------------------------------------------------------------- summaries
@dataclass
class _Stats:
    """Counts gathered while building; ``summary()`` turns them into the returned dict."""

    kind: str
    max_txt_len: int
    written: int = 0
    tokens_total: int = 0
    tokens_max: int = 0
    over_max_txt_len: int = 0
    dropped: Counter = field(default_factory=Counter)
    extra: dict = field(default_factory=dict)

    def add(self, n_tokens: int) -> None:
        self.written += 1
        self.tokens_total += n_tokens
        self.tokens_max = max(self.tokens_max, n_tokens)
        self.over_max_txt_len += n_tokens > self.max_txt_len

    def summary(self, inputs: dict, outputs: dict) -> dict:
        return {"kind": self.kind, "inputs": inputs, "outputs": outputs, "written": self.written,
                "dropped": dict(sorted(self.dropped.items())),
                "tokens_mean": round(self.tokens_total / self.written, 2) if self.written else 0.0,
                "tokens_max": self.tokens_max, "max_txt_len": self.max_txt_len,
                "over_max_txt_len": self.over_max_txt_len, **self.extra}


def format_summary(summary: dict) -> str:
    """Human-readable multi-line text of a builder's summary."""
    lines = [f"[{summary['kind']}] wrote {summary['written']} examples"]
    for name, path in summary["outputs"].items():
        lines.append(f"  output {name}: {path}")
    for reason, count in summary["dropped"].items():
        lines.append(f"  dropped {count}: {reason}")
    lines.append(f"  tokens per example: mean {summary['tokens_mean']}, max {summary['tokens_max']}; "
                 f"{summary['over_max_txt_len']} over max_txt_len {summary['max_txt_len']} (skipped in training)")
    skip = {"kind", "inputs", "outputs", "written", "dropped", "tokens_mean", "tokens_max", "max_txt_len",
            "over_max_txt_len"}
    lines.extend(f"  {key}: {value}" for key, value in summary.items() if key not in skip)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ common
def _as_tokenizer(tokenizer: TokenizerLike) -> UC2Tokenizer:
    return tokenizer if isinstance(tokenizer, UC2Tokenizer) else load_tokenizer(tokenizer)


def make_meta(tok: UC2Tokenizer, **extra) -> dict:
    """meta.json content: special ids, ``v_range`` = [first normal id, <mask>) for MLM's random tokens."""
    return {"CLS": tok.cls_id, "SEP": tok.sep_id, "MASK": tok.mask_id, "PAD": tok.pad_id, "UNK": tok.unk_id,
            "v_range": [FIRST_NORMAL_ID, tok.mask_id], "vocab_size": tok.vocab_size,
            "bert": tok.name, "tokenizer": str(tok.path), **extra}


def _progress(items: Iterable, desc: str, enabled: bool) -> Iterable:
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=" lines", disable=not enabled)


def _check_image(img_fname: str, img_names: frozenset[str] | None, drop_unknown: bool, stats: _Stats,
                 path: Path, lineno: int, img_db) -> bool:
    """True if the example may be kept; counts or raises for images missing from the img_db."""
    if img_names is None or img_fname in img_names:
        return True
    if drop_unknown:
        stats.dropped["image not in img_db"] += 1
        return False
    raise DataError(f"{path}, line {lineno}: image {img_fname!r} is not in img_db {img_db} "
                    f"(pass drop_unknown_images / --drop_unknown_images to drop such examples)")


def _check_nonempty(text: str, key: str, drop_empty: bool, stats: _Stats, path: Path, lineno: int) -> bool:
    if text:
        return True
    if drop_empty:
        stats.dropped[f"empty {key}"] += 1
        return False
    raise DataError(f"{path}, line {lineno}: field {key!r} is empty (pass drop_empty / --drop_empty to drop it)")


def _check_written(stats: _Stats, path: Path) -> None:
    """Refuse to publish an empty database (raised inside the writer's block, so nothing is left)."""
    if stats.written == 0:
        dropped = ", ".join(f"{n} {why}" for why, n in stats.dropped.items()) or "no input lines"
        raise DataError(f"{path}: no example left to write ({dropped})")


def _check_unique(key: str, seen: set, path: Path, lineno: int) -> None:
    if key in seen:
        raise DataError(f"{path}, line {lineno}: duplicate example id {key!r}")
    seen.add(key)


# ---------------------------------------------------------------------------------------------- captions
def caption_db_path(out_dir: str | os.PathLike, split: str, lang: str) -> Path:
    """Where ``build_caption_dbs`` writes one language: ``OUT_DIR/{split}_{lang}.db``."""
    return Path(out_dir) / f"{split}_{lang}.db"


def build_caption_dbs(jsonl: str | os.PathLike, out_dir: str | os.PathLike, tokenizer: TokenizerLike,
                      split: str, *, img_db: str | os.PathLike | None = None, drop_unknown_images: bool = False,
                      drop_empty: bool = False, max_txt_len: int = DEFAULT_MAX_TXT_LEN, overwrite: bool = False,
                      progress: bool = True) -> dict:
    """Captions JSONL -> one txt_db per language, ``OUT_DIR/{split}_{lang}.db``.

    Each example (key = ``id``) stores ``input_ids`` (no specials), ``img_fname``, ``raw`` (the caption) and
    ``lang``. With ``img_db``, captions of images the img_db lacks are an error, or dropped and counted with
    ``drop_unknown_images``. Returns the summary dict (see ``format_summary``).
    """
    path, tok = Path(jsonl), _as_tokenizer(tokenizer)
    img_names = load_img_names(img_db) if img_db is not None else None
    stats = _Stats("captions", max_txt_len)
    outputs: dict[str, str] = {}
    with ExitStack() as stack:  # an error anywhere exits every writer with it, so none publishes
        writers: dict[str, TxtDbWriter] = {}
        seen: dict[str, set] = {}
        for lineno, row in _progress(iter_jsonl(path, CAPTION_FIELDS), f"captions {path.name}", progress):
            key, lang, caption, img_fname = _caption_row(row, path, lineno)
            if not (_check_nonempty(caption, "caption", drop_empty, stats, path, lineno)
                    and _check_image(img_fname, img_names, drop_unknown_images, stats, path, lineno, img_db)):
                continue
            if lang not in writers:
                db_dir = caption_db_path(out_dir, split, lang)
                meta = make_meta(tok, lang=lang, task="captions")
                writers[lang] = stack.enter_context(TxtDbWriter(db_dir, meta, overwrite=overwrite))
                outputs[lang], seen[lang] = str(db_dir), set()
            _check_unique(key, seen[lang], path, lineno)
            ids = tok.encode(caption)
            writers[lang].add(key, {"input_ids": ids, "img_fname": img_fname, "raw": caption, "lang": lang})
            stats.add(len(ids))
        _check_written(stats, path)
    return stats.summary({"captions": str(path)}, outputs)


def _caption_row(row: dict, path: Path, lineno: int) -> tuple[str, str, str, str]:
    """Validated ``(id, lang, caption, img_fname)`` of one captions line."""
    lang = _text(row, "lang", path, lineno)
    if not _LANG_RE.fullmatch(lang):
        raise DataError(f"{path}, line {lineno}: field 'lang' must be a language code such as 'en' or "
                        f"'zh-cn' (letters, digits, '_' or '-'; it names the output db), got {lang!r}")
    return (_example_id(row, "id", path, lineno), lang, _text(row, "caption", path, lineno),
            _text(row, "img_fname", path, lineno))


# --------------------------------------------------------------------------------------------------- VQA
_TRAILING_PUNCT = re.compile(r"[\s.,!?;:]+$")


def normalize_answer(answer: str) -> str:
    """Lower-case, strip, collapse inner whitespace and drop trailing ``. , ! ? ; :`` ("Two  Dogs." -> "two dogs").

    Deliberately simpler than the VQA evaluation script (no number words, articles or contractions): the
    same rule is applied to training answers, the answer vocabulary and predictions, so it only has to be
    consistent.
    """
    return _TRAILING_PUNCT.sub("", " ".join(answer.lower().split()))


def vqa_soft_score(count: int) -> float:
    """VQA soft score of an answer given by ``count`` annotators: 0 -> 0.0, 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, 4+ -> 1.0."""
    if count < 0:
        raise ValueError(f"answer count must be >= 0, got {count}")
    return min(1.0, round(0.3 * count, 1))


def build_ans2label(answer_lists: Iterable[Sequence[str]], top_k: int) -> dict[str, int]:
    """Answer vocabulary: the ``top_k`` most frequent normalised answers (frequency = number of annotations).

    Labels go by descending frequency; ties are broken by the answer string, so the result is deterministic.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    counts = Counter(a for answers in answer_lists for a in map(normalize_answer, answers) if a)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top_k]
    return {answer: label for label, (answer, _) in enumerate(ranked)}


def load_ans2label(path: str | os.PathLike) -> dict[str, int]:
    """Read an ``ans2label.json`` ({answer: label}, labels 0..K-1 each used once); keys are normalised."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"ans2label file {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):
        raise DataError(f"{path}: expected a JSON object mapping answer strings to integer labels")
    if sorted(raw.values()) != list(range(len(raw))):
        raise DataError(f"{path}: labels must be 0..{len(raw) - 1}, each used exactly once")
    ans2label: dict[str, int] = {}
    for answer, label in raw.items():
        norm = normalize_answer(answer)
        if norm in ans2label:
            raise DataError(f"{path}: answers {answer!r} and another one both normalise to {norm!r}")
        ans2label[norm] = label
    return ans2label


def vqa_target(answers: Sequence[str], ans2label: dict[str, int]) -> dict:
    """Soft target of one question: ``{"labels": [int], "scores": [float]}``, sorted by label.

    Answers outside ``ans2label`` are ignored (the target may be empty).
    """
    counts = Counter(a for a in answers if a in ans2label)
    labels = sorted(ans2label[a] for a in counts)
    label2ans = {ans2label[a]: a for a in counts}
    return {"labels": labels, "scores": [vqa_soft_score(counts[label2ans[label]]) for label in labels]}


def _answers(row: dict, path: Path, lineno: int) -> list[str]:
    answers = row["answers"]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise DataError(f"{path}, line {lineno}: field 'answers' must be a list of strings")
    return [a for a in map(normalize_answer, answers) if a]


def _vqa_rows(path: Path, progress: bool, desc: str) -> Iterator[tuple[int, str, str, str, str, list[str]]]:
    """Validated VQA lines: ``(lineno, question_id, img_fname, lang, question, normalised answers)``."""
    seen: set[str] = set()
    for lineno, row in _progress(iter_jsonl(path, VQA_FIELDS), desc, progress):
        qid = _example_id(row, "question_id", path, lineno)
        _check_unique(qid, seen, path, lineno)
        yield (lineno, qid, _text(row, "img_fname", path, lineno), _text(row, "lang", path, lineno),
               _text(row, "question", path, lineno), _answers(row, path, lineno))


def build_vqa_db(jsonl: str | os.PathLike, out_db: str | os.PathLike, tokenizer: TokenizerLike, *,
                 ans2label: str | os.PathLike | dict[str, int] | None = None, top_k: int = DEFAULT_NUM_ANSWERS,
                 img_db: str | os.PathLike | None = None, drop_unknown_images: bool = False,
                 drop_empty: bool = False, max_txt_len: int = DEFAULT_MAX_TXT_LEN, overwrite: bool = False,
                 progress: bool = True) -> dict:
    """VQA JSONL -> one txt_db at ``out_db`` plus ``ans2label.json`` / ``label2ans.json`` inside it.

    Each example (key = ``question_id``) stores ``input_ids``, ``img_fname``, ``question_id``, ``answers``
    (normalised), ``target`` ({labels, scores}, see ``vqa_target``), ``raw`` (the question) and ``lang``.
    The answer vocabulary is ``ans2label`` (a file or a dict) or, when None, the ``top_k`` most frequent
    answers of this file. Questions whose answers all fall outside it are kept with an empty target and
    counted (``no_answer_in_vocab``); so are questions without answers (``no_answers``, e.g. a test split).
    ``label2ans.json`` is a JSON list: entry i is the answer of label i.
    """
    path, tok = Path(jsonl), _as_tokenizer(tokenizer)
    img_names = load_img_names(img_db) if img_db is not None else None
    # First pass validates every line (before anything is written) and collects the answers.
    answer_lists = [row[-1] for row in _vqa_rows(path, progress, f"vqa check {path.name}")]
    vocab = _resolve_ans2label(ans2label, answer_lists, top_k)
    stats = _Stats("vqa", max_txt_len, extra={"num_answers": len(vocab), "no_answer_in_vocab": 0, "no_answers": 0})
    out_db = Path(out_db)
    with TxtDbWriter(out_db, make_meta(tok, task="vqa", num_answers=len(vocab)), overwrite=overwrite) as writer:
        for lineno, qid, img_fname, lang, question, answers in _vqa_rows(path, progress, f"vqa {path.name}"):
            if not (_check_nonempty(question, "question", drop_empty, stats, path, lineno)
                    and _check_image(img_fname, img_names, drop_unknown_images, stats, path, lineno, img_db)):
                continue
            target = vqa_target(answers, vocab)
            if not answers:
                stats.extra["no_answers"] += 1
            elif not target["labels"]:
                stats.extra["no_answer_in_vocab"] += 1
            ids = tok.encode(question)
            writer.add(qid, {"input_ids": ids, "img_fname": img_fname, "question_id": qid, "answers": answers,
                             "target": target, "raw": question, "lang": lang})
            stats.add(len(ids))
        _check_written(stats, path)
    # TxtDbWriter knows only its own side files; these two are added to the published folder atomically.
    atomic_write_json(vocab, out_db / "ans2label.json", indent=None, sort_keys=False)
    atomic_write_json(sorted(vocab, key=vocab.__getitem__), out_db / "label2ans.json", indent=None, sort_keys=False)
    return stats.summary({"vqa": str(path)}, {"vqa": str(out_db)})


def _resolve_ans2label(ans2label, answer_lists: list[list[str]], top_k: int) -> dict[str, int]:
    if ans2label is None:
        return build_ans2label(answer_lists, top_k)
    if isinstance(ans2label, dict):
        return {normalize_answer(a): label for a, label in ans2label.items()}
    return load_ans2label(ans2label)


# ------------------------------------------------------------------------------------------------ paired
def parse_pharaoh(line: str, where: str) -> list[tuple[int, int]]:
    """Parse one Pharaoh alignment line ("0-1 2-3") into ``[(i, j), ...]``; an empty line is no alignment.

    ``where`` (file and line) starts the error message.
    """
    pairs = []
    for token in line.split():
        left, dash, right = token.partition("-")
        if not (dash and left.isdigit() and right.isdigit()):
            raise DataError(f"{where}: malformed alignment pair {token!r} (expected 'i-j', two non-negative "
                            f"word indices)")
        pairs.append((int(left), int(right)))
    return pairs


def align_to_walign(pairs: Sequence[tuple[int, int]], n_words1: int, n_words2: int,
                    where: str) -> dict[int, list[int]]:
    """Pharaoh pairs -> ``{lang1 word index: sorted lang2 word indices}`` (int keys, as the original)."""
    walign: dict[int, set[int]] = {}
    for i, j in pairs:
        if i >= n_words1 or j >= n_words2:
            raise DataError(f"{where}: alignment pair {i}-{j} is out of range: caption1 has {n_words1} words, "
                            f"caption2 has {n_words2}")
        walign.setdefault(i, set()).add(j)
    return {i: sorted(js) for i, js in sorted(walign.items())}


def _count_nonblank(path: Path) -> int:
    if not path.is_file():
        raise DataError(f"input file {path} does not exist")
    with path.open(encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def _count_lines(path: Path) -> int:
    if not path.is_file():
        raise DataError(f"alignment file {path} does not exist")
    with path.open(encoding="utf-8") as f:
        return sum(1 for _ in f)


def paired_example(tok: UC2Tokenizer, caption1: str, caption2: str, lang1: str, lang2: str,
                   walign: dict[int, list[int]], img_fname: str,
                   no_space_langs: Iterable[str] = DEFAULT_NO_SPACE_LANGS) -> dict:
    """The stored VTLM example: per-side ids and word2ids, the alignment, and
    ``input_ids`` = lang1 ids + [SEP, CLS] + lang2 ids (``</s> <s>``, the original layout)."""
    ids1, w2i1 = tok.encode_words(caption1.split(), lang1, no_space_langs)
    ids2, w2i2 = tok.encode_words(caption2.split(), lang2, no_space_langs)
    return {"input_ids": ids1 + [tok.sep_id, tok.cls_id] + ids2,
            "input_ids_lang1": ids1, "input_ids_lang2": ids2,
            "word2ids_lang1": w2i1, "word2ids_lang2": w2i2,
            "lang1_lang2_walign": walign, "img_fname": img_fname, "lang1": lang1, "lang2": lang2}


def build_paired_db(jsonl: str | os.PathLike, align_file: str | os.PathLike, out_db: str | os.PathLike,
                    tokenizer: TokenizerLike, *, no_space_langs: Iterable[str] = DEFAULT_NO_SPACE_LANGS,
                    img_db: str | os.PathLike | None = None, drop_unknown_images: bool = False,
                    drop_empty: bool = False, max_txt_len: int = DEFAULT_MAX_TXT_LEN, overwrite: bool = False,
                    progress: bool = True) -> dict:
    """Paired captions JSONL + Pharaoh alignments -> one VTLM txt_db at ``out_db`` (fields: ``paired_example``).

    Line k of ``align_file`` belongs to the k-th non-blank JSON line. ``id2len`` is ``len(input_ids)`` (both
    sides and the two separators). Words are whitespace-split; see ``UC2Tokenizer.encode_words`` for how
    ``no_space_langs`` words are tokenised.
    """
    path, align_path, tok = Path(jsonl), Path(align_file), _as_tokenizer(tokenizer)
    n_json, n_align = _count_nonblank(path), _count_lines(align_path)
    if n_json != n_align:
        raise DataError(f"{align_path} has {n_align} alignment lines but {path} has {n_json} JSON lines "
                        f"(expected one alignment line per JSON line, in the same order)")
    img_names = load_img_names(img_db) if img_db is not None else None
    no_space = frozenset(no_space_langs)
    stats = _Stats("paired", max_txt_len)
    seen: set[str] = set()
    out_db = Path(out_db)
    with TxtDbWriter(out_db, make_meta(tok, task="paired"), overwrite=overwrite) as writer, \
            align_path.open(encoding="utf-8", errors="replace") as align_lines:
        rows = _progress(iter_jsonl(path, PAIRED_FIELDS), f"paired {path.name}", progress)
        for (lineno, row), (align_no, align_line) in zip(rows, enumerate(align_lines, start=1)):
            key = _example_id(row, "id", path, lineno)
            _check_unique(key, seen, path, lineno)
            texts = {name: _text(row, name, path, lineno) for name in PAIRED_FIELDS[1:]}
            if not (_check_nonempty(texts["caption1"], "caption1", drop_empty, stats, path, lineno)
                    and _check_nonempty(texts["caption2"], "caption2", drop_empty, stats, path, lineno)
                    and _check_image(texts["img_fname"], img_names, drop_unknown_images, stats, path, lineno,
                                     img_db)):
                continue
            where = f"{align_path}, line {align_no} (alignment of {path}, line {lineno})"
            walign = align_to_walign(parse_pharaoh(align_line, where), len(texts["caption1"].split()),
                                     len(texts["caption2"].split()), where)
            value = paired_example(tok, texts["caption1"], texts["caption2"], texts["lang1"], texts["lang2"],
                                   walign, texts["img_fname"], no_space)
            writer.add(key, value)
            stats.add(len(value["input_ids"]))
        _check_written(stats, path)
    return stats.summary({"paired": str(path), "alignments": str(align_path)}, {"paired": str(out_db)})
