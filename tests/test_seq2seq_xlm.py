"""The encoder-decoder over the seed's XLM-style model: the decoder initialisation in the seed's names
(facts §11.8), cached == uncached (4), loss == forced decoding (5), zero attention on padded text and
region slots (6), NMT ignores images (7), language ids per direction and en->fr end to end (12)."""
from __future__ import annotations

import pytest
import torch

from model.generation import SearchConfig, generate, rescore
from model.seq2seq_xlm import (build_from_xlm, decoder_state_from_seed, decoder_state_to_seed,
                               init_decoder_from_xlm)
from tests.helpers import one_thread  # noqa: F401 - autouse fixture
from tests.helpers_seq2seq import (EN_WORDS, FR_WORDS, SPECIAL, source_batch, source_examples, target_batch,
                                   tiny_xlm, toy_batch, train_toy)


def _targets() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return target_batch([torch.randint(3, 40, (n,), generator=gen).tolist() + [SPECIAL.eos] for n in (6, 3, 9)])


def test_decoder_init_in_the_seeds_names():
    """encoder_attn.i == attentions.i, layer_norm15.i == layer_norm1.i, every other tensor == checkpoint."""
    pretrained = tiny_xlm()
    model = build_from_xlm(pretrained, True, "en", "fr", SPECIAL)
    seed_dec, ckpt = decoder_state_to_seed(model.decoder), pretrained.state_dict()
    for i in range(2):
        for name in ("q_lin.weight", "k_lin.bias", "v_lin.weight", "out_lin.bias"):
            assert torch.equal(seed_dec[f"encoder_attn.{i}.{name}"], ckpt[f"attentions.{i}.{name}"])
        assert torch.equal(seed_dec[f"layer_norm15.{i}.weight"], ckpt[f"layer_norm1.{i}.weight"])
    others = [k for k in seed_dec if not k.startswith(("encoder_attn.", "layer_norm15."))]
    assert len(others) > 20
    for key in others:
        assert torch.equal(seed_dec[key], ckpt[key]), key
    assert model.decoder.output.weight is model.decoder.embeddings.word_embeddings.weight
    assert not {p.data_ptr() for p in model.encoder.parameters()} & {p.data_ptr() for p in model.decoder.parameters()}


def test_seed_decoder_names_round_trip():
    model = build_from_xlm(tiny_xlm(), False, "en", "fr", SPECIAL)
    seed = decoder_state_to_seed(model.decoder)
    assert {"attentions.1.q_lin.weight", "layer_norm15.0.bias", "ffns.1.lin2.weight", "pred_layer.proj.bias",
            "lang_embeddings.weight"} <= set(seed)
    other = build_from_xlm(tiny_xlm(seed=5), False, "en", "fr", SPECIAL)
    other.decoder.load_state_dict(decoder_state_from_seed(seed, 2))
    for key, value in model.decoder.state_dict().items():
        assert torch.equal(other.decoder.state_dict()[key], value), key
    seed.pop("layer_norm15.1.bias")
    with pytest.raises(KeyError, match="missing.*layer_norm15.1.bias"):
        decoder_state_from_seed(seed, 2)


def test_from_scratch_decoder_is_not_a_copy():
    pretrained = tiny_xlm()
    model = build_from_xlm(pretrained, False, "en", "fr", SPECIAL, init_dec_from_enc=False)
    layer = model.decoder.layer[0]
    assert not torch.equal(layer.attention.self.query.weight, pretrained.attentions[0].q_lin.weight)
    assert not torch.equal(layer.crossattention.self.query.weight, layer.attention.self.query.weight)
    with pytest.raises(ValueError, match="decoder has 2 layers"):
        init_decoder_from_xlm(model.decoder, _three_layer_xlm())


def _three_layer_xlm():
    import dataclasses

    from model.xlm import XlmModel

    return XlmModel(dataclasses.replace(tiny_xlm().cfg, n_layers=3))


@pytest.mark.parametrize("direction,src_id,tgt_id", [(("en", "fr"), 0, 1), (("fr", "en"), 1, 0),
                                                     (("en", "de"), 1, 0)])
def test_language_ids_follow_the_language_not_the_side(direction, src_id, tgt_id):
    src_lang, tgt_lang = direction
    model = build_from_xlm(tiny_xlm(langs=direction), True, src_lang, tgt_lang, SPECIAL)
    assert model.decoder.config.type_id == tgt_id
    assert model.encoder.xlm.cfg.lang2id[src_lang] == src_id
    batch = source_batch(source_examples([5]))
    side = torch.where(batch["input_ids"] != SPECIAL.pad, 0, -1)
    assert model.encoder.xlm.lang_ids(side, [(src_lang,)]).unique().tolist() == [src_id]


@pytest.mark.parametrize("use_images", [False, True], ids=["nmt", "mmt"])
def test_cached_logits_and_loss_match_full_forward(use_images):
    model = build_from_xlm(tiny_xlm(), use_images, "en", "fr", SPECIAL)
    src, tgt = source_batch(source_examples([5, 11, 8], n_regions=[3, 1, 2])), _targets()
    with torch.no_grad():
        enc = model.encode(src)
        full = model.decode(tgt, enc)
        cache = model.init_cache(enc)
        steps = torch.cat([model.decode(tgt[:, t:t + 1], cache=cache) for t in range(tgt.shape[1])], dim=1)
        loss, n = model.loss(src, tgt)
    assert (steps - full).abs().max() <= 1e-5
    gold = tgt[:, 1:]
    picked = steps[:, :-1].gather(2, gold[..., None]).squeeze(2)[gold != SPECIAL.pad]
    assert abs(loss.item() + picked.mean().item()) <= 1e-5 and n == picked.numel()
    hyps = generate(model, src, SearchConfig(beam_size=3, length_penalty=1.0))
    uncached = generate(model, src, SearchConfig(beam_size=3, length_penalty=1.0, use_cache=False))
    assert [h.tokens for h in hyps] == [h.tokens for h in uncached]
    for hyp, forced in zip(hyps, rescore(model, src, hyps)):
        assert abs(hyp.score - forced / len(hyp.tokens)) <= 1e-5


def test_regions_first_and_padded_slots_get_zero_attention():
    model = build_from_xlm(tiny_xlm(), True, "en", "fr", SPECIAL)
    src, tgt = source_batch(source_examples([5, 11, 8], n_regions=[3, 1, 2])), _targets()
    with torch.no_grad():
        enc = model.encode(src)
        assert enc.keep[:, :3].tolist() == [[True] * 3, [True, False, False], [True, True, False]]  # regions first
        assert enc.keep.sum(1).tolist() == [3 + 5, 1 + 11, 2 + 8]
        noisy = enc.states.masked_fill(~enc.keep[..., None], 1e4)
        assert torch.equal(model.decode(tgt, enc), model.decode(tgt, enc._replace(states=noisy)))


def test_nmt_ignores_images_bit_for_bit():
    model = build_from_xlm(tiny_xlm(), False, "en", "fr", SPECIAL)
    src, tgt = source_batch(source_examples([5, 11, 8])), _targets()
    shuffled = dict(src, img_feat=src["img_feat"].flip(0) + 1, img_pos_feat=src["img_pos_feat"].flip(0))
    with torch.no_grad():
        assert torch.equal(model.decode(tgt, model.encode(src)), model.decode(tgt, model.encode(shuffled)))


def test_xlm_en_to_fr_mmt_trains_and_decodes():
    """The seed's configuration, en->fr (source sorts before target): trains and translates the toy task."""
    model = train_toy(build_from_xlm(tiny_xlm(), True, "en", "fr", SPECIAL), steps=150, lr=3e-3)
    src, tgt = toy_batch(torch.Generator().manual_seed(123), 16)
    hyps = generate(model, src, SearchConfig(beam_size=4))
    right = total = 0
    for hyp, ref in zip(hyps, tgt.tolist()):
        ref = [t for t in ref[1:] if t != SPECIAL.pad]
        assert hyp.tokens[-1] == SPECIAL.eos and all(t in FR_WORDS for t in hyp.tokens[:-1])
        right += sum(a == b for a, b in zip(hyp.tokens, ref))
        total += len(ref)
    assert right / total >= 0.5
    assert not any(t in EN_WORDS for h in hyps for t in h.tokens)
