"""Early Adaptation: class-word embeddings, the KL loss, and training on synthetic region features."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from model.config import UC2ModelConfig
from model.early_adaptation import (class_word_embeddings, ea_state_dict, early_adaptation_loss,
                                    project_regions, run_early_adaptation, top1_agreement)
from model.model import UC2ForPretraining
from model.weights import load_uc2_checkpoint

C, D, H, V = 6, 12, 16, 40


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return UC2ForPretraining(UC2ModelConfig(vocab_size=V, hidden_size=H, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=8, max_position_embeddings=10, img_dim=D,
                                            img_label_dim=C))


def synthetic(gen, n, prototypes):
    """Regions = class prototype + noise; the detector is confident in the true class."""
    cls = torch.randint(0, C, (n,), generator=gen)
    feats = prototypes[cls] + 0.5 * torch.randn(n, D, generator=gen)
    probs = (4 * F.one_hot(cls, C) + 0.5 * torch.randn(n, C, generator=gen)).softmax(-1)
    return {"img_feat": feats, "soft_labels": probs}


def test_class_word_embeddings_mean_of_subtokens():
    word_emb = torch.arange(12.0).view(6, 2)  # row i = [2i, 2i+1]
    table = torch.tensor([[1, -1, -1], [2, 4, -1], [0, 3, 5]])
    out = class_word_embeddings(word_emb, table, torch.tensor([1, 2, 3]))
    assert torch.equal(out, torch.tensor([[2.0, 3.0], [6.0, 7.0], [16 / 3, 19 / 3]]))


def test_class_word_embeddings_bad_input():
    word_emb = torch.zeros(6, 2)
    with pytest.raises(ValueError, match="lengths must lie in 1..2"):
        class_word_embeddings(word_emb, torch.tensor([[1, 2]]), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"class 1: token ids \[9, -1\] outside the vocabulary \(0..5\)"):
        class_word_embeddings(word_emb, torch.tensor([[1, 2], [9, -1]]), torch.tensor([2, 1]))


def test_loss_is_kl_to_softmax_of_cosines():
    gen = torch.Generator().manual_seed(1)
    region, classes = torch.randn(3, H, generator=gen), torch.randn(C, H, generator=gen)
    probs = torch.rand(3, C, generator=gen)
    loss, cos = early_adaptation_loss(region, classes, probs * 7, tau=0.2)  # unnormalised p is renormalised
    p = probs / probs.sum(-1, keepdim=True)
    expected_cos = torch.stack([F.cosine_similarity(r[None], classes, dim=-1) for r in region])
    q = (expected_cos / 0.2).softmax(-1)
    assert torch.allclose(cos, expected_cos, atol=1e-6)
    assert math.isclose(loss.item(), (p * (p / q).log()).sum(-1).mean().item(), rel_tol=1e-5)
    # Two identical class-word sets (e.g. two languages) give the same loss as one.
    loss2, _ = early_adaptation_loss(region, torch.stack([classes, classes]), probs, tau=0.2)
    assert math.isclose(loss2.item(), loss.item(), rel_tol=1e-6)


def test_loss_top_k_restricts_to_detector_top_classes():
    region, classes = torch.randn(2, H), torch.randn(C, H)
    probs = torch.tensor([[0.5, 0.3, 0.2, 0, 0, 0], [0, 0, 0, 0.05, 0.15, 0.8]])
    loss, cos = early_adaptation_loss(region, classes, probs, tau=0.5, top_k=2)
    assert cos.shape == (2, 2)
    full_cos = early_adaptation_loss(region, classes, probs, tau=0.5)[1]
    assert torch.equal(cos[0], full_cos[0, [0, 1]]) and torch.equal(cos[1], full_cos[1, [5, 4]])
    p = torch.tensor([[0.5, 0.3], [0.8, 0.15]])
    p = p / p.sum(-1, keepdim=True)
    log_q = (cos / 0.5).log_softmax(-1)
    assert math.isclose(loss.item(), (p * (p.log() - log_q)).sum(-1).mean().item(), rel_tol=1e-5)


def test_early_adaptation_learns_detector_classes():
    model = tiny_model()
    gen = torch.Generator().manual_seed(0)
    table = torch.randint(4, V, (C, 3), generator=gen)
    class_emb = class_word_embeddings(model.roberta.embeddings.word_embeddings.weight.detach(), table,
                                      torch.tensor([1, 2, 3, 1, 2, 1]))
    prototypes = torch.randn(C, D, generator=gen)
    batches = [synthetic(gen, 64, prototypes) for _ in range(4)]
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "img_" not in k and "feat_regress.weight" != k}
    logs = run_early_adaptation(model, batches, steps=120, lr=1e-2, tau=0.1, class_emb=class_emb)
    assert len(logs) == 120
    assert logs[-1]["kl"] < 0.1 * logs[0]["kl"]
    held_out = synthetic(gen, 400, prototypes)
    with torch.no_grad():
        proj = project_regions(model.roberta.img_embeddings, held_out["img_feat"])
        _, cos = early_adaptation_loss(proj, class_emb, held_out["soft_labels"], tau=0.1)
    assert top1_agreement(cos, held_out["soft_labels"]) > 0.9  # chance is 1/6
    for key, value in frozen.items():  # only the image projection moved
        assert torch.equal(model.state_dict()[key], value), key
    assert model.feat_regress.weight is model.roberta.img_embeddings.img_linear.weight


def test_one_shot_iterator_running_out_is_an_error():
    model = tiny_model()
    gen = torch.Generator().manual_seed(0)
    batches = iter([synthetic(gen, 8, torch.randn(C, D, generator=gen))])
    with pytest.raises(ValueError, match="batches ran out after 1 of 3 steps"):
        run_early_adaptation(model, batches, steps=3, lr=1e-3, tau=0.1, class_emb=torch.randn(C, H))


def test_ea_state_dict_loads_into_a_fresh_model():
    trained, fresh = tiny_model(1), tiny_model(2)
    state = ea_state_dict(trained)
    assert set(state) == {k for k in trained.state_dict() if k.startswith("roberta.img_embeddings.")}
    report = load_uc2_checkpoint(fresh, state, allow_partial=True)
    assert torch.equal(fresh.roberta.img_embeddings.img_linear.weight, trained.roberta.img_embeddings.img_linear.weight)
    assert torch.equal(fresh.feat_regress.weight, trained.roberta.img_embeddings.img_linear.weight)
    assert "roberta.encoder.layer.0.output.dense.weight" in report.missing


def test_cli_writes_a_loadable_checkpoint(tmp_path, orig_fixtures):
    """scripts/early_adaptation.py on the original demo img_db, a tiny tokenizer and a tiny XLM-R folder."""
    transformers = pytest.importorskip("transformers")
    from data.tokenizer import load_tokenizer
    from scripts.early_adaptation import main
    from tests.helpers import make_tiny_tokenizer

    tok_dir = make_tiny_tokenizer(tmp_path)
    torch.manual_seed(0)
    hf_config = transformers.XLMRobertaConfig(
        vocab_size=load_tokenizer(tok_dir).vocab_size, hidden_size=H, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=8, max_position_embeddings=20, type_vocab_size=1, layer_norm_eps=1e-5)
    transformers.XLMRobertaForMaskedLM(hf_config).save_pretrained(tmp_path / "xlmr")
    labels = tmp_path / "labels"
    labels.mkdir()
    words = "man woman dog cat horse beach car people ball park".split()
    (labels / "objects_vocab_en.txt").write_text("\n".join(words[i % 10] for i in range(1600)) + "\n")
    out = main(["--xlmr", str(tmp_path / "xlmr"), "--tokenizer", str(tok_dir),
                "--img_db", str(orig_fixtures / "img_db" / "demo_imgs"), "--label_dir", str(labels),
                "--out", str(tmp_path / "ea" / "ea.pt"), "--steps", "5", "--lr", "1e-2", "--device", "cpu",
                "--regions_per_batch", "20"])
    state = torch.load(out, weights_only=True)
    assert state["roberta.img_embeddings.img_linear.weight"].shape == (H, 40)
    meta = json.loads(out.with_name("ea.pt.json").read_text())
    assert len(meta["kl"]) == 5 and meta["last"]["kl"] < meta["first"]["kl"]
    model = UC2ForPretraining(UC2ModelConfig(vocab_size=hf_config.vocab_size, hidden_size=H, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=8, max_position_embeddings=20,
                                             img_dim=40))
    report = load_uc2_checkpoint(model, out, allow_partial=True)
    assert len(report.loaded) == len(state)
