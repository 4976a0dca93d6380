"""Tokenizer: XLM-R id layout, agreement with the raw SentencePiece model, word-level encoding, errors."""
from pathlib import Path

import pytest

from utils.errors import DataError
from data.tokenizer import SPM_FILE, load_tokenizer, train_sentencepiece_tokenizer
from tests.helpers import make_tiny_tokenizer, tiny_sentences

SAMPLES = ["a man is riding a horse on the beach", "ein Mann reitet ein Pferd", "muž jede na koni",
           "男性が浜辺で馬に乗っている", "一个男人在海滩上骑马"]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


def test_special_ids_follow_xlmr(tok):
    assert (tok.cls_id, tok.pad_id, tok.sep_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.mask_id == tok.vocab_size - 1
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, tok.mask_id]) == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def test_ids_equal_sentencepiece_plus_offset(tok, tok_dir):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tok_dir / SPM_FILE))
    assert tok.vocab_size == sp.get_piece_size() + 2
    for text in SAMPLES:
        ids = tok.encode(text)
        assert ids == [i + 1 for i in sp.encode(text)]
        assert ids == tok.hf.encode(text, add_special_tokens=False)
        assert min(ids) >= 4  # no special ids inside real text


@pytest.mark.parametrize("text", ["男性が浜辺で馬に乗っている", "一个男人在海滩上骑马", "muž jede na koni"])
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert 3 not in ids  # character_coverage 1.0: no <unk> for seen scripts
    assert tok.decode(ids) == text


def test_literal_special_strings_never_become_special_ids(tok):
    ids = tok.encode("a <mask> and </s>")
    assert not {tok.cls_id, tok.pad_id, tok.sep_id, tok.mask_id} & set(ids)


def test_encode_words_space_language_matches_sentence(tok):
    words = "a man is riding a horse".split()
    ids, word2ids = tok.encode_words(words, "en")
    assert ids == tok.encode(" ".join(words))
    assert [i for positions in word2ids for i in positions] == list(range(len(ids)))
    for word, positions in zip(words, word2ids):
        assert [ids[p] for p in positions] == tok.encode(word)


def test_encode_words_no_space_language_has_no_inner_prefix(tok):
    words = "男性 が 浜辺 で 馬".split()
    ids, word2ids = tok.encode_words(words, "ja")
    assert [i for positions in word2ids for i in positions] == list(range(len(ids)))
    tokens = tok.convert_ids_to_tokens(ids)
    later = [tokens[p] for positions in word2ids[1:] for p in positions]
    assert not any(t.startswith("▁") for t in later)
    assert tok.decode(ids) == "".join(words)
    # Treated as a space language the later words would each start with the ▁ marker.
    spaced, _ = tok.encode_words(words, "ja", no_space_langs=())
    assert spaced != ids and tok.decode(spaced) == " ".join(words)


def test_load_is_cached_per_path(tok_dir):
    assert load_tokenizer(tok_dir) is load_tokenizer(str(tok_dir) + "/")


def test_folder_with_only_the_sentencepiece_model_loads(tok, tok_dir, tmp_path):
    (tmp_path / SPM_FILE).write_bytes((tok_dir / SPM_FILE).read_bytes())
    bare = load_tokenizer(tmp_path)
    assert bare.vocab_size == tok.vocab_size
    assert all(bare.encode(t) == tok.encode(t) for t in SAMPLES)


def test_missing_folder_and_missing_files_are_named(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*sentencepiece\.bpe\.model"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"neither tokenizer\.json nor sentencepiece\.bpe\.model.*readme\.txt"):
        load_tokenizer(tmp_path)


def test_corrupt_files_give_data_errors(tmp_path):
    (tmp_path / "spm").mkdir()
    (tmp_path / "spm" / SPM_FILE).write_bytes(b"not a model")
    with pytest.raises(DataError, match=r"spm/sentencepiece\.bpe\.model is not a readable SentencePiece model"):
        load_tokenizer(tmp_path / "spm")
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "tokenizer.json").write_text("{")
    with pytest.raises(DataError, match=r"could not load the tokenizer in .*json"):
        load_tokenizer(tmp_path / "json")


def test_model_file_and_tokenizer_json_must_agree(tok_dir, tmp_path):
    other = train_sentencepiece_tokenizer(tiny_sentences(n_per_lang=20, seed=2), tmp_path / "other",
                                         vocab_size=150)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "tokenizer.json").write_bytes((tok_dir / "tokenizer.json").read_bytes())
    (mixed / SPM_FILE).write_bytes((other / SPM_FILE).read_bytes())
    with pytest.raises(DataError, match="different tokenizers"):
        load_tokenizer(mixed)


def test_training_is_deterministic_and_atomic(tmp_path):
    texts = tiny_sentences(n_per_lang=30, seed=1)
    a = train_sentencepiece_tokenizer(texts, tmp_path / "a", vocab_size=120, seed=3)
    b = train_sentencepiece_tokenizer(texts, tmp_path / "b", vocab_size=120, seed=3)
    assert (a / SPM_FILE).read_bytes() == (b / SPM_FILE).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temp dirs left
    with pytest.raises(DataError, match="already exists"):
        train_sentencepiece_tokenizer(texts, a, vocab_size=120)
    with pytest.raises(DataError, match=r"training .*c failed.*Vocabulary size is smaller than required_chars"):
        train_sentencepiece_tokenizer(texts, tmp_path / "c", vocab_size=20)
    with pytest.raises(DataError, match="no non-empty text"):
        train_sentencepiece_tokenizer(["", "  "], tmp_path / "c", vocab_size=50)
    assert not (tmp_path / "c").exists()
