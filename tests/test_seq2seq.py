"""Encoder-decoder invariants (MMT facts sheet §11): decoder initialisation copies (8), cached == uncached
logits (4), loss == forced incremental decoding (5), padded source slots get zero attention and region
slots are never masked (6), NMT ignores images bit for bit (7), strict loading. Tiny models, CPU fp32."""
from __future__ import annotations

import pytest
import torch

from utils.errors import DataError
from model.seq2seq import (DecoderConfig, EncoderOutput, build_from_uc2, count_parameters, init_decoder_from_uc2,
                           load_pretrained, load_seq2seq_state)
from model.weights import save_uc2_checkpoint
from tests.helpers import one_thread  # noqa: F401 - autouse fixture
from tests.helpers_seq2seq import (SPECIAL, source_batch, source_examples, target_batch, tiny_pretrained,
                                   tiny_seq2seq)


def _targets(seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(3, 40, (n,), generator=gen).tolist() + [SPECIAL.eos] for n in (6, 3, 9)]
    return target_batch(seqs)


def test_decoder_init_copies_encoder_and_cross_attention_from_self_attention():
    pretrained = tiny_pretrained(seed=4, std=0.2)
    model = build_from_uc2(pretrained, use_images=True, special=SPECIAL)
    ckpt = pretrained.state_dict()
    dec = model.decoder.state_dict()
    for i in range(2):
        for name in ("self.query.weight", "self.key.bias", "self.value.weight", "output.dense.weight",
                     "output.LayerNorm.weight", "output.LayerNorm.bias"):
            enc_name = f"roberta.encoder.layer.{i}.attention.{name}"
            assert torch.equal(dec[f"layer.{i}.crossattention.{name}"], ckpt[enc_name])  # encoder_attn.i == attentions.i
            assert torch.equal(dec[f"layer.{i}.attention.{name}"], ckpt[enc_name])
        assert torch.equal(dec[f"layer.{i}.intermediate.dense.weight"],
                           ckpt[f"roberta.encoder.layer.{i}.intermediate.dense.weight"])
        assert torch.equal(dec[f"layer.{i}.output.LayerNorm.bias"], ckpt[f"roberta.encoder.layer.{i}.output.LayerNorm.bias"])
    assert torch.equal(dec["embeddings.word_embeddings.weight"], ckpt["roberta.embeddings.word_embeddings.weight"])
    assert torch.equal(dec["embeddings.token_type_embeddings.weight"],
                       ckpt["roberta.embeddings.new_token_type_embeddings.weight"])
    assert torch.equal(dec["output.dense.weight"], ckpt["cls.dense.weight"])
    assert torch.equal(dec["output.bias"], ckpt["cls.bias"])
    # The encoder is the checkpoint's backbone, unchanged.
    for name, value in model.encoder.roberta.state_dict().items():
        assert torch.equal(value, ckpt[f"roberta.{name}"]), name


def test_decoder_output_tied_to_its_own_embedding_and_nothing_shared_with_encoder():
    model = tiny_seq2seq(use_images=False)
    assert model.decoder.output.weight is model.decoder.embeddings.word_embeddings.weight
    enc_ptrs = {p.data_ptr() for p in model.encoder.parameters()}
    assert not enc_ptrs & {p.data_ptr() for p in model.decoder.parameters()}
    before = model.encoder.roberta.embeddings.word_embeddings.weight.clone()
    with torch.no_grad():
        model.decoder.embeddings.word_embeddings.weight.add_(1.0)
    assert torch.equal(model.encoder.roberta.embeddings.word_embeddings.weight, before)
    assert torch.equal(model.decoder.output.weight, model.decoder.embeddings.word_embeddings.weight)


def test_random_decoder_init_when_not_from_encoder():
    pretrained = tiny_pretrained(seed=0)
    model = build_from_uc2(pretrained, use_images=False, special=SPECIAL, init_dec_from_enc=False)
    layer = model.decoder.layer[0]
    assert not torch.equal(layer.crossattention.self.query.weight, layer.attention.self.query.weight)
    assert torch.all(model.decoder.embeddings.word_embeddings.weight[SPECIAL.pad] == 0)
    state_total = sum(v.numel() for v in model.decoder.state_dict().values())
    assert count_parameters(model.decoder) == state_total - 40 * 32  # the tied (V, H) weight counted once
    names = dict(model.decoder.named_parameters())
    assert "output.weight" not in names  # the tie is one Parameter, listed under the embedding


def test_decoder_copy_refuses_other_depth():
    model = tiny_seq2seq(use_images=False)
    with pytest.raises(ValueError, match="decoder has 2 layers, the encoder 3"):
        init_decoder_from_uc2(model.decoder, tiny_pretrained(num_hidden_layers=3))


@pytest.mark.parametrize("use_images", [False, True], ids=["nmt", "mmt"])
def test_cached_incremental_logits_equal_full_causal_forward(use_images):
    model = tiny_seq2seq(use_images)
    src = source_batch(source_examples([5, 11, 8]))
    tgt = _targets()
    with torch.no_grad():
        enc = model.encode(src)
        full = model.decode(tgt, enc)  # (B, T, V), whole prefix, causal
        cache = model.init_cache(enc)
        steps = torch.cat([model.decode(tgt[:, t:t + 1], cache=cache) for t in range(tgt.shape[1])], dim=1)
        chunk_cache = model.init_cache(enc)  # a prefix of 4 at once, then token by token
        chunks = torch.cat([model.decode(tgt[:, :4], cache=chunk_cache)]
                           + [model.decode(tgt[:, t:t + 1], cache=chunk_cache) for t in range(4, tgt.shape[1])], dim=1)
    assert cache.length == tgt.shape[1]
    assert (steps - full).abs().max() <= 1e-5
    assert (chunks - full).abs().max() <= 1e-5


def test_reorder_cache_follows_beam_index():
    model = tiny_seq2seq(use_images=True)
    src = source_batch(source_examples([5, 11, 8]))
    tgt = _targets()
    with torch.no_grad():
        enc = model.encode(src)
        cache = model.init_cache(enc)
        model.decode(tgt[:, :3], cache=cache)
        index = torch.tensor([2, 0, 0, 1])
        model.reorder_cache(cache, index)
        stepped = model.decode(tgt[index, 3:4], cache=cache)[:, 0]
        full = model.decode(tgt[index, :4], enc.index_select(index))[:, -1]
    assert (stepped - full).abs().max() <= 1e-5


@pytest.mark.parametrize("use_images", [False, True], ids=["nmt", "mmt"])
def test_loss_equals_mean_forced_incremental_logprob(use_images):
    model = tiny_seq2seq(use_images)
    src = source_batch(source_examples([5, 11, 8]))
    tgt = _targets()
    with torch.no_grad():
        loss, n_tokens = model.loss(src, tgt)
        cache = model.init_cache(model.encode(src))
        picked = []
        for t in range(tgt.shape[1] - 1):
            logp = model.decode(tgt[:, t:t + 1], cache=cache)[:, 0]  # (B, V)
            gold = tgt[:, t + 1]
            real = gold != SPECIAL.pad
            picked.append(logp[real].gather(1, gold[real, None]).squeeze(1))
        forced = torch.cat(picked)
    assert n_tokens == forced.numel() == 6 + 3 + 9 + 3
    assert abs(loss.item() - (-forced.mean().item())) <= 1e-5


def test_loss_has_gradients_and_no_label_smoothing():
    model = tiny_seq2seq(use_images=True).train()
    src = source_batch(source_examples([5, 11, 8]))
    tgt = _targets()
    loss, _ = model.loss(src, tgt)
    loss.backward()
    assert model.decoder.layer[1].crossattention.self.key.weight.grad.abs().sum() > 0
    assert model.encoder.roberta.img_embeddings.img_linear.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert torch.isclose(model.loss(src, tgt)[0], -model.token_logprobs(src, tgt).sum() / 21, atol=1e-5)


@pytest.mark.parametrize("use_images", [False, True], ids=["nmt", "mmt"])
def test_padded_source_slots_get_zero_attention(use_images):
    """Overwriting the encoder states of padded source slots with huge values changes nothing."""
    model = tiny_seq2seq(use_images)
    src = source_batch(source_examples([5, 11, 8], n_regions=[3, 1, 2]))
    tgt = _targets()
    with torch.no_grad():
        enc = model.encode(src)
        assert (~enc.keep).any()
        noisy = enc.states.masked_fill(~enc.keep[..., None], 1e4)
        assert torch.equal(model.decode(tgt, enc), model.decode(tgt, EncoderOutput(noisy, enc.keep)))


def test_region_slots_are_never_masked_in_mmt():
    model = tiny_seq2seq(use_images=True)
    src = source_batch(source_examples([5, 11, 8], n_regions=[3, 1, 2]))
    with torch.no_grad():
        enc = model.encode(src)
    assert enc.keep.sum(1).tolist() == [5 + 3, 11 + 1, 8 + 2]
    assert model.source_lengths(src).tolist() == [5, 11, 8]


def test_nmt_ignores_images_bit_for_bit():
    model = tiny_seq2seq(use_images=False)
    examples = source_examples([5, 11, 8])
    src = source_batch(examples)
    shuffled = dict(src, img_feat=src["img_feat"].flip(0) * 3, img_pos_feat=src["img_pos_feat"].flip(0))
    text_only = {k: src[k] for k in ("input_ids", "position_ids")}
    tgt = _targets()
    with torch.no_grad():
        ref = model.decode(tgt, model.encode(src))
        assert torch.equal(ref, model.decode(tgt, model.encode(shuffled)))
        assert torch.equal(ref, model.decode(tgt, model.encode(text_only)))


def test_mmt_needs_images():
    model = tiny_seq2seq(use_images=True)
    src = source_batch(source_examples([5]))
    with pytest.raises(KeyError, match="img_feat"):
        model.encode({k: src[k] for k in ("input_ids", "position_ids")})


def test_state_round_trip_and_strict_load(tmp_path):
    model = tiny_seq2seq(use_images=True, seed=1)
    path = tmp_path / "mt.pt"
    torch.save(model.state_dict(), path)
    other = tiny_seq2seq(use_images=True, seed=2)
    load_seq2seq_state(other, path)
    src, tgt = source_batch(source_examples([5, 7])), _targets()[:2]
    with torch.no_grad():
        assert torch.equal(model.decode(tgt, model.encode(src)), other.decode(tgt, other.encode(src)))
    state = model.state_dict()
    state["encoder.roberta.img_embeddings.extra.bias"] = torch.zeros(3)
    with pytest.raises(DataError, match="unexpected.*extra.bias"):
        load_seq2seq_state(other, state)
    state = model.state_dict()
    del state["decoder.layer.1.crossattention.output.LayerNorm.bias"]
    with pytest.raises(DataError, match="missing.*crossattention.output.LayerNorm.bias"):
        load_seq2seq_state(other, state)


def test_load_pretrained_from_uc2_checkpoint(tmp_path):
    source = tiny_pretrained(seed=3, std=0.2)
    path = save_uc2_checkpoint(source, tmp_path / "uc2.pt")
    loaded = load_pretrained(source.config, "uc2", path)
    model = build_from_uc2(loaded, use_images=True, special=SPECIAL)
    assert torch.equal(model.decoder.layer[1].crossattention.self.value.weight,
                       source.roberta.encoder.layer[1].attention.self.value.weight)
    with pytest.raises(ValueError, match="unknown init 'vtlm'"):
        load_pretrained(source.config, "vtlm", path)
    with pytest.raises(DataError, match="checkpoint file not found"):
        load_pretrained(source.config, "uc2", tmp_path / "absent.pt")


def test_decoder_config_follows_backbone():
    config = DecoderConfig.from_uc2(tiny_pretrained().config)
    assert (config.hidden_size, config.num_layers, config.position_offset, config.layer_eps) == (32, 2, 2, 1e-12)


def test_load_pretrained_from_xlmr_folder(tmp_path):
    """A Hugging Face XLM-R folder (roberta.* + lm_head.*) initialises encoder and decoder alike."""
    source = tiny_pretrained(seed=6, std=0.2)
    state = {k: v for k, v in source.state_dict().items()
             if k.startswith(("roberta.embeddings.word", "roberta.embeddings.position", "roberta.embeddings.Layer",
                              "roberta.encoder."))}
    for name in ("dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias", "bias"):
        state[f"lm_head.{name}"] = source.state_dict()[f"cls.{name}"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    model = build_from_uc2(load_pretrained(source.config, "xlmr", tmp_path), use_images=False, special=SPECIAL)
    xlmr_q = source.roberta.encoder.layer[1].attention.self.query.weight
    assert torch.equal(model.encoder.roberta.encoder.layer[1].attention.self.query.weight, xlmr_q)
    assert torch.equal(model.decoder.layer[1].crossattention.self.query.weight, xlmr_q)
    assert torch.equal(model.decoder.output.dense.weight, source.cls.dense.weight)


def test_cache_shares_source_rows_between_beams_and_copies_when_not_grouped():
    model = tiny_seq2seq(use_images=True)
    src, tgt = source_batch(source_examples([5, 11, 8])), _targets()
    with torch.no_grad():
        enc = model.encode(src)
        for index, group in ((torch.tensor([0, 0, 1, 1, 2, 2]), 2), (torch.tensor([2, 0, 0, 1]), 1)):
            cache = model.init_cache(enc)
            model.reorder_cache(cache, index)
            assert cache.group == group and cache.cross_k[0].shape[0] == len(index) // group
            stepped = torch.cat([model.decode(tgt[index, t:t + 1], cache=cache) for t in range(4)], dim=1)
            full = model.decode(tgt[index, :4], enc.index_select(index))
            assert (stepped - full).abs().max() <= 1e-5
        model.reorder_cache(cache, torch.tensor([3, 1]))  # rows of a copied cache: still right
        assert (model.decode(tgt[[1, 0], 4:5], cache=cache)[:, 0]
                - model.decode(tgt[[1, 0], :5], enc.index_select(torch.tensor([1, 0])))[:, -1]).abs().max() <= 1e-5
