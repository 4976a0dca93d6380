"""Tiny encoder-decoders and source batches for the seq2seq / generation tests (CPU, fp32)."""
from __future__ import annotations

import torch

from data.collate import collate_backbone, xlmr_position_ids
from model.config import UC2ModelConfig
from model.model import UC2ForPretraining
from model.seq2seq import EncoderDecoder, SpecialIds, build_from_uc2

VOCAB = 40
IMG_DIM = 12
SPECIAL = SpecialIds.xlmr()  # <s> 0, <pad> 1, </s> 2
FIRST_WORD = 3


def tiny_config(**overrides) -> UC2ModelConfig:
    values = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=80, img_dim=IMG_DIM, img_label_dim=7,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    values.update(overrides)
    return UC2ModelConfig(**values)


def tiny_pretrained(seed: int = 0, std: float = 0.02, **overrides) -> UC2ForPretraining:
    """A random UC2 pretraining model; a large ``std`` makes its distributions peaked (varied lengths)."""
    torch.manual_seed(seed)
    config = tiny_config(initializer_range=std, **overrides)
    return UC2ForPretraining(config).eval()


def tiny_seq2seq(use_images: bool, seed: int = 0, std: float = 0.3, **kwargs) -> EncoderDecoder:
    """Random peaked encoder-decoder: decoder copied from the encoder (init_dec_from_enc)."""
    return build_from_uc2(tiny_pretrained(seed, std), use_images, SPECIAL, **kwargs).eval()


def source_examples(lengths: list[int], n_regions: list[int] | None = None, seed: int = 0) -> list[dict]:
    """One example per length: ``<s> words </s>`` (length counts both), random regions."""
    gen = torch.Generator().manual_seed(seed)
    n_regions = n_regions or [3] * len(lengths)
    out = []
    for n, r in zip(lengths, n_regions):
        words = torch.randint(FIRST_WORD, VOCAB, (n - 2,), generator=gen)
        ids = torch.cat([torch.tensor([SPECIAL.bos]), words, torch.tensor([SPECIAL.eos])])
        out.append({"input_ids": ids, "position_ids": xlmr_position_ids(n),
                    "img_feat": torch.randn(r, IMG_DIM, generator=gen), "img_pos_feat": torch.rand(r, 7, generator=gen)})
    return out


def source_batch(examples: list[dict]) -> dict:
    """Collated backbone keys (tensors only)."""
    return {k: v for k, v in collate_backbone(examples).items() if isinstance(v, torch.Tensor)}


def target_batch(sequences: list[list[int]]) -> torch.Tensor:
    """``<s> tokens`` right-padded with <pad> (tokens should end with </s>) (B, T)."""
    longest = max(len(s) for s in sequences) + 1
    tgt = torch.full((len(sequences), longest), SPECIAL.pad, dtype=torch.long)
    tgt[:, 0] = SPECIAL.bos
    for i, seq in enumerate(sequences):
        tgt[i, 1:len(seq) + 1] = torch.tensor(seq)
    return tgt


EN_WORDS = range(3, 21)  # toy "English" ids
FR_WORDS = range(21, 39)  # toy "French" ids; the lexicon maps EN_WORDS[i] <-> FR_WORDS[i]


def toy_pair(rng: torch.Generator, reverse: bool = False) -> tuple[list[int], list[int]]:
    """A toy (en, fr) pair: fr = lexicon(en), word for word; ``reverse`` swaps the direction."""
    n = int(torch.randint(2, 8, (1,), generator=rng))
    en = torch.randint(EN_WORDS.start, EN_WORDS.stop, (n,), generator=rng).tolist()
    fr = [FR_WORDS.start + w - EN_WORDS.start for w in en]
    return (fr, en) if reverse else (en, fr)


def toy_batch(rng: torch.Generator, size: int, reverse: bool = False, images: bool = False):
    """(src batch, tgt (B, T)) of toy pairs; the source is ``<s> words </s>``, the target ``<s> words </s>``."""
    pairs = [toy_pair(rng, reverse) for _ in range(size)]
    examples = []
    for src_words, _ in pairs:
        ids = torch.tensor([SPECIAL.bos] + src_words + [SPECIAL.eos])
        examples.append({"input_ids": ids, "position_ids": xlmr_position_ids(len(ids)),
                         "img_feat": torch.randn(2, IMG_DIM, generator=rng), "img_pos_feat": torch.rand(2, 7, generator=rng)})
    return source_batch(examples), target_batch([tgt + [SPECIAL.eos] for _, tgt in pairs])


def train_toy(model: EncoderDecoder, steps: int, reverse: bool = False, seed: int = 0, lr: float = 3e-3) -> EncoderDecoder:
    """Teacher-forced training on the toy task with Adam; returns the model in eval mode."""
    rng = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        src, tgt = toy_batch(rng, 32, reverse)
        loss, _ = model.loss(src, tgt)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def tiny_xlm(langs=("en", "fr"), seed: int = 0):
    """A tiny XLM-style (VTLM seed) model, no dropout."""
    from model.xlm import XlmConfig, XlmModel

    torch.manual_seed(seed)
    return XlmModel(XlmConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, ffn_dim=64, dropout=0.0,
                              attention_dropout=0.0, visual_dropout=0.0, max_positions=80, langs=list(langs),
                              pad_index=SPECIAL.pad, mask_index=4, img_dim=IMG_DIM, box_dim=7, num_classes=5)).eval()
