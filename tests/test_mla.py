"""MLA invariants (MLA_FACTS §5): English bit-identical, frozen unchanged, gradient and step locality, adding a
language, zero-init identity, routing, losses and parameter counts."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from model.clip import DualEncoder, DualEncoderConfig, TextConfig, VisionConfig
from model.mla import Acquirer, LanguageAcquisition, MLAConfig, le_loss, nlt_loss
from optim.adamw import build_optimizer

VOCAB, WIDTH = 40, 32


def _native(seed: int = 0) -> DualEncoder:
    cfg = DualEncoderConfig(text=TextConfig(width=WIDTH, layers=2, heads=4, ffn=64, vocab_size=VOCAB,
                                            context_length=12, eos_id=2),
                            vision=VisionConfig(kind="region", feat_dim=8, width=WIDTH, layers=1, heads=4, ffn=64),
                            embed_dim=16)
    torch.manual_seed(seed)
    return DualEncoder(cfg)


def _mla(langs=("de", "fr"), **kw) -> LanguageAcquisition:
    model = LanguageAcquisition(_native(), MLAConfig(vocab_size=VOCAB, embed_width=24, languages=list(langs), **kw))
    model.train()
    return model


def _ids(seed: int, n: int = 6) -> torch.Tensor:
    """(n, 8): ``<s>`` words ``</s>`` then padding 1, lengths 3..6."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = 3 + i % 4
        words = torch.randint(3, VOCAB, (length,), generator=gen).tolist()
        rows.append([0, *words, 2] + [1] * (6 - length))
    return torch.tensor(rows)


def _images(n: int = 6):
    gen = torch.Generator().manual_seed(7)
    return torch.randn(n, 3, 8, generator=gen), torch.rand(n, 3, 7, generator=gen), torch.ones(n, 3, dtype=torch.bool)


def _optimizer(model):
    cfg = SimpleNamespace(learning_rate=1e-2, weight_decay=0.01, betas=(0.9, 0.98), adam_eps=1e-6)
    return build_optimizer(model, cfg)


def _step(model, opt, lang: str, seed: int) -> None:
    """One NLT + LE step on a ``lang`` batch, as the tasks run it."""
    ids = _ids(seed)
    with torch.no_grad():
        teacher = model.encode_text(_ids(seed + 100), "en")
        image = model.encode_image(*_images())
    student = model.encode_text(ids, lang)
    (nlt_loss(student, teacher) + le_loss(image, student)).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _snapshot(model, langs) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {lang: model.encode_text(_ids(99), lang).clone() for lang in langs}


def test_english_and_frozen_weights_bitwise_unchanged_by_training():
    model = _mla()
    native_before = {k: v.clone() for k, v in model.native.state_dict().items()}
    en_before = _snapshot(model, ["en"])["en"]
    with torch.no_grad():
        img_before = model.encode_image(*_images())
    opt = _optimizer(model)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(not p.requires_grad and id(p) not in in_opt for p in model.native.parameters())
    for step in range(4):
        _step(model, opt, ["de", "fr"][step % 2], step)
    assert not model.native.training  # train() never puts the teacher in training mode
    assert all(torch.equal(v, native_before[k]) for k, v in model.native.state_dict().items())
    assert torch.equal(_snapshot(model, ["en"])["en"], en_before)
    with torch.no_grad():
        assert torch.equal(model.encode_image(*_images()), img_before)
    assert not torch.equal(_snapshot(model, ["de"])["de"], _snapshot(_mla(), ["de"])["de"])  # it did train


def test_only_embedding_and_own_acquirers_get_grads_and_move():
    model = _mla()
    opt = _optimizer(model)
    _step(model, opt, "fr", 0)  # fr has optimizer state now (momentum)
    fr_before = {k: v.clone() for k, v in model.acquirers["fr"].state_dict().items()}
    ids = _ids(1)
    with torch.no_grad():
        teacher = model.encode_text(_ids(2), "en")
    nlt_loss(model.encode_text(ids, "de"), teacher).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(n.startswith(("multilingual_embedding", "acquirers.de.")) for n in with_grad)
    assert any(n.startswith("acquirers.de.") for n in with_grad)
    opt.step()
    opt.zero_grad(set_to_none=True)
    assert all(torch.equal(v, fr_before[k]) for k, v in model.acquirers["fr"].state_dict().items())


def test_adding_a_language_leaves_earlier_ones_bitwise():
    model = _mla()
    opt = _optimizer(model)
    for step in range(4):
        _step(model, opt, ["de", "fr"][step % 2], step)
    before = _snapshot(model, ["en", "de", "fr"])
    model.add_language("cs", train_embedding=False)
    opt = _optimizer(model)
    assert {n for g in opt.param_groups for n in g["names"]} == {
        n for n, _ in model.named_parameters() if n.startswith("acquirers.cs.")}
    for step in range(3):
        _step(model, opt, "cs", 10 + step)
    after = _snapshot(model, ["en", "de", "fr", "cs"])
    assert all(torch.equal(after[lang], before[lang]) for lang in before)
    # With θ_emb trained as well (MLA's own extension run) the earlier languages drift, English does not.
    model.add_language("ja", train_embedding=True)
    opt = _optimizer(model)
    _step(model, opt, "ja", 20)
    drift = _snapshot(model, ["en", "de"])
    assert torch.equal(drift["en"], before["en"]) and not torch.equal(drift["de"], before["de"])


def test_zero_init_with_native_embedding_reproduces_native_encoder_exactly():
    native = _native()
    model = LanguageAcquisition(native, MLAConfig(vocab_size=VOCAB, embed_width=WIDTH, languages=["de"],
                                                  zero_init=True, eos_id=2))
    model.init_embedding(native.text.token_embedding.weight)
    with torch.no_grad():
        model.multilingual_embedding_linear.weight.copy_(torch.eye(WIDTH))
        model.multilingual_embedding_linear.bias.zero_()
        x = torch.randn(3, 5, WIDTH)
        assert torch.equal(Acquirer(WIDTH, 16, zero_init=True)(x), x)
        ids = _ids(3)
        assert torch.equal(model.encode_text(ids, "de"), native.encode_text(ids))


def test_routing_never_borrows_another_language():
    model = _mla(langs=("de",))
    with pytest.raises(KeyError, match="'fr' has no acquirers"):
        model.encode_text(_ids(0), "fr")
    with pytest.raises(ValueError, match="native language"):
        model.add_language("en")
    with pytest.raises(ValueError, match="already has"):
        model.add_language("de")


def test_losses_on_hand_made_cases():
    student = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    assert nlt_loss(student, teacher).item() == pytest.approx((1 + 4 + 4 + 0) / 4)  # mean over B x E
    assert nlt_loss(2 * student, 2 * teacher).item() == pytest.approx(4 * (1 + 4 + 4) / 4)  # not normalised
    eye = torch.eye(2)
    # cos = I: logits 100·I, each row's CE = log(1 + e^-100); τ = 0.01 fixed
    assert le_loss(3 * eye, eye).item() == pytest.approx(math.log1p(math.exp(-100.0)), abs=1e-12)
    v, t = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    c = 1 / math.sqrt(2)
    logits = torch.tensor([[100 * c, 0.0], [100 * c, 100.0]])
    rows = torch.nn.functional.cross_entropy(logits, torch.arange(2))
    cols = torch.nn.functional.cross_entropy(logits.t(), torch.arange(2))
    assert le_loss(v, t).item() == pytest.approx(0.5 * (rows + cols).item(), rel=1e-6)
    assert le_loss(v, t, temperature=0.07).item() != pytest.approx(le_loss(v, t).item())


def test_parameter_counts_with_mbert_sizes():
    """θ_emb 92,205,824 and 3,154,944 per language for CLIP ViT-B/32 + M-BERT (MLA_FACTS §1.2-1.3)."""
    with torch.device("meta"):
        native = DualEncoder(DualEncoderConfig(vision=VisionConfig(kind="region", feat_dim=8, layers=1)))
        model = LanguageAcquisition(native, MLAConfig(vocab_size=119547, embed_width=768))
    emb = sum(p.numel() for n, p in model.named_parameters() if n.startswith("multilingual_embedding"))
    per_lang = sum(p.numel() for p in model.acquirers["de"].parameters())
    text = sum(p.numel() for p in native.text.parameters())
    assert (emb, per_lang, text) == (92_205_824, 3_154_944, 63_428_096)


def test_grouped_image_to_text_ranking_invariants():
    """MLA_FACTS §5.9: grouped R@1 = standard R@1; grouped R@5/10 >= standard; equal with one caption per image."""
    import numpy as np

    from evaluation.retrieval_metrics import retrieval_recalls

    rng = np.random.default_rng(0)
    t5 = np.repeat(np.arange(40), 5)
    scores = rng.normal(size=(200, 40)) + 1.0 * (t5[:, None] == np.arange(40))
    std, grp = retrieval_recalls(scores, t5), retrieval_recalls(scores, t5, img2txt="grouped")
    assert grp["img_r1"] == std["img_r1"] and grp["txt_r5"] == std["txt_r5"]
    assert grp["img_r5"] >= std["img_r5"] and grp["img_r10"] >= std["img_r10"]
    assert grp["img_r5"] > std["img_r5"]  # the case is not degenerate: the two rankings do differ
    one = rng.normal(size=(40, 40))
    assert retrieval_recalls(one, np.arange(40)) == retrieval_recalls(one, np.arange(40), img2txt="grouped")
