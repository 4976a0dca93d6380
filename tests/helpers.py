"""Test helpers shared across test files (import as ``from tests.helpers import ...``).

``make_tiny_tokenizer`` trains a small XLM-R-layout tokenizer (a couple of seconds, deterministic); call it
once per session from a fixture, e.g.::

    @pytest.fixture(scope="session")
    def tiny_tok_dir(tmp_path_factory):
        return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))
"""
from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
import torch

# Small per-language vocabularies; ja/zh words are written unsegmented in captions, as real data is.
_WORDS = {
    "en": "a man woman dog cat is riding a horse on the beach red car two people playing ball in park".split(),
    "de": "ein Mann Frau Hund Katze reitet ein Pferd am Strand rotes Auto zwei Leute spielen Ball im Park".split(),
    "fr": "un homme femme chien chat monte un cheval sur la plage voiture rouge deux personnes jouent".split(),
    "cs": "muž žena pes kočka jede na koni na pláži červené auto dva lidé hrají míč v parku".split(),
    "ja": "男性 女性 犬 猫 が 浜辺 で 馬 に 乗って いる 赤い 車 二人 公園 ボール 遊んで".split(),
    "zh": "一个 男人 女人 狗 猫 在 海滩 上 骑马 红色 汽车 两个 人 公园 里 玩 球".split(),
}
NO_SPACE = {"ja", "zh"}


def tiny_sentences(n_per_lang: int = 120, seed: int = 0) -> list[str]:
    """Deterministic pseudo-captions in en/de/fr/cs/ja/zh (ja/zh without spaces)."""
    rng = random.Random(seed)
    out = []
    for lang, words in _WORDS.items():
        sep = "" if lang in NO_SPACE else " "
        for _ in range(n_per_lang):
            out.append(sep.join(rng.choice(words) for _ in range(rng.randint(3, 9))))
    return out


def make_tiny_tokenizer(tmp_path: Path, texts: Sequence[str] | None = None, vocab_size: int = 300) -> Path:
    """Train (or reuse, if already in ``tmp_path/tiny_tok``) a tiny tokenizer; returns its folder."""
    from data.tokenizer import train_sentencepiece_tokenizer

    out = Path(tmp_path) / "tiny_tok"
    if (out / "tokenizer.json").is_file():
        return out
    return train_sentencepiece_tokenizer(texts if texts is not None else tiny_sentences(), out,
                                         vocab_size=vocab_size, seed=0)


def write_jsonl(path: Path, rows: Iterable[dict | str]) -> Path:
    """Write rows as JSON lines (a ``str`` row is written verbatim, to make malformed input)."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def write_lines(path: Path, lines: Iterable[str]) -> Path:
    """Write plain text lines (alignment files etc.)."""
    path = Path(path)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def horovodrun_or_skip() -> list[str]:
    """The ``horovodrun`` command of this Python environment; skips the test when horovod is not built,
    except in CI (``CI`` set), where .ci/run builds it and a missing horovod must fail, not skip."""
    import importlib.util
    import os
    import sys

    import pytest

    launcher = Path(sys.executable).with_name("horovodrun")
    if importlib.util.find_spec("horovod") is None or not launcher.is_file():
        if os.environ.get("CI"):
            pytest.fail("CI: horovod is not installed (.ci/run builds it with scripts/build_horovod.sh)")
        pytest.skip("horovod not installed (PYTHON=.venv/bin/python scripts/build_horovod.sh builds it)")
    # gloo only (no MPI here); all ranks on this host
    return [str(launcher), "-np", "2", "-H", "localhost:2", "--gloo", "--start-timeout", "60"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Import into a test module that runs small models: the tests share two cores with other work, and
    extra intra-op threads only spin there (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
