"""VTLM-C / TLM (the MMT seed's pretraining): masking rates (MMT_FACTS §11.9), sequence layout, the seed's
model layout, and a few training steps on both backbones that lower the loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.base import MaskingConfig
from tasks.vtlmc import (REGION_KEEP, REGION_MASK, REGION_NONE, REGION_RANDOM, TlmcObjective, VtlmcObjective,
                              draw_region_actions, mask_text, pair_sequence, replace_random_regions)
from model.xlm import XlmConfig, XlmModel
from tests.helpers_mmt import one_thread  # noqa: F401 (autouse fixture)




META = {"CLS": 0, "SEP": 2, "MASK": 99, "v_range": (5, 99)}
DRAWS = 100_000


def test_text_masking_rates_over_1e5_draws():
    """p = 0.15 per position except position 0; of the chosen 80 % [MASK] / 10 % random / 10 % kept."""
    rng = np.random.default_rng(0)
    ids = np.arange(10, 30, dtype=np.int64)  # 20 positions, all distinct, none equal to MASK
    chosen = first = masked = kept = 0
    for _ in range(DRAWS // len(ids) * 5):
        out, labels = mask_text(ids, 0.15, META, rng, evaluation=False)
        sel = labels != -1
        first += int(sel[0])
        chosen += int(sel[1:].sum())
        masked += int((out[sel] == META["MASK"]).sum())
        kept += int((out[sel] == ids[sel]).sum())
    n_pos = DRAWS // len(ids) * 5 * (len(ids) - 1)
    assert first == 0
    assert chosen / n_pos == pytest.approx(0.15, abs=0.003)
    assert masked / chosen == pytest.approx(0.8, abs=0.01)
    # a random id can equal the original (1 in 94): kept share = 0.1 + 0.1 / 94
    assert kept / chosen == pytest.approx(0.1 + 0.1 / 94, abs=0.01)


def test_region_action_rates_over_1e5_draws():
    actions, picks = draw_region_actions(DRAWS, np.random.default_rng(1))
    rates = [np.mean(actions == a) for a in (REGION_NONE, REGION_MASK, REGION_KEEP, REGION_RANDOM)]
    assert rates == pytest.approx([0.85, 0.12, 0.015, 0.015], abs=0.003)
    assert ((0 <= picks) & (picks < 1)).all()


def test_random_regions_take_a_batch_feature_and_keep_their_box():
    feat = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    actions = torch.tensor([[REGION_RANDOM, 0, 0], [0, REGION_RANDOM, 0]])
    picks = torch.tensor([[0.99, 0, 0], [0, 0.0, 0]])
    out = replace_random_regions(feat, actions, picks, num_bbs=[3, 2])  # 5 real regions in the pool
    assert torch.equal(out[0, 0], feat[1, 1])  # pick 0.99 -> last real region (example 1, region 1)
    assert torch.equal(out[1, 1], feat[0, 0])
    assert torch.equal(out[0, 1:], feat[0, 1:]) and torch.equal(out[1, 2], feat[1, 2])


def test_validation_masking_is_deterministic_all_mask_at_least_one():
    ids = np.arange(10, 14, dtype=np.int64)
    for seed in range(200):
        out, labels = mask_text(ids, 0.15, META, np.random.default_rng(seed), evaluation=True)
        again, _ = mask_text(ids, 0.15, META, np.random.default_rng(seed), evaluation=True)
        sel = labels != -1
        assert sel.sum() >= 1 and not sel[0]
        assert (out[sel] == META["MASK"]).all() and np.array_equal(out, again)


def test_pair_layout_positions_restart_and_sides():
    ids, sides, restart = pair_sequence([7, 8], [9, 10, 11], META)
    assert ids.tolist() == [0, 7, 8, 2, 0, 9, 10, 11, 2]
    assert restart == 4 and sides.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]


def test_language_ids_sorted_with_img():
    assert XlmConfig(langs=["en", "de"]).lang2id == {"de": 0, "en": 1, "img": 2}
    assert XlmConfig(langs=["en", "fr"]).lang2id == {"en": 0, "fr": 1, "img": 2}


def tiny_xlm(**kw) -> XlmModel:
    cfg = dict(vocab_size=100, dim=32, n_layers=2, n_heads=4, ffn_dim=64, langs=["de", "en"], mask_index=99,
               img_dim=6, box_dim=4, num_classes=5, max_positions=40)
    cfg.update(kw)
    return XlmModel(XlmConfig(**cfg))


def test_seed_parameter_names_and_tied_output():
    model = tiny_xlm()
    keys = set(model.state_dict())
    for key in ("embeddings.weight", "position_embeddings.weight", "lang_embeddings.weight",
                "layer_norm_emb.weight", "attentions.1.q_lin.weight", "attentions.1.out_lin.bias",
                "layer_norm1.1.weight", "ffns.1.lin1.weight", "ffns.1.lin2.weight", "layer_norm2.1.weight",
                "pred_layer.proj.weight", "pred_layer.proj.bias", "img_pred_layer.proj.weight",
                "projector.linear.weight", "regional_encodings.linear.weight", "regional_encodings.linear.bias"):
        assert key in keys, key
    assert model.pred_layer.proj.weight is model.embeddings.weight
    assert "regional_encodings.linear.bias" not in tiny_xlm(reg_enc_bias=False).state_dict()
    assert model.embeddings.weight[1].abs().sum() == 0  # pad row


class _Source:
    """A stand-in ExampleSource: four pairs over two images with soft labels."""

    def __init__(self, n_regions=(3, 4)):
        g = torch.Generator().manual_seed(0)
        self.images = [{"img_feat": torch.rand(n, 6, generator=g), "img_pos_feat": torch.rand(n, 7, generator=g),
                        "soft_labels": torch.rand(n, 5, generator=g)} for n in n_regions]
        self.pairs = [([10 + i, 11 + i], [20 + i, 21, 22]) for i in range(4)]

    def text(self, index):
        from tasks.base import TextRecord
        ids1, ids2 = self.pairs[index]
        fields = {"input_ids_lang1": ids1, "input_ids_lang2": ids2, "img_fname": index % 2, "lang1": "en",
                  "lang2": "de"}
        return TextRecord(0, str(index), fields, META, None)

    def image(self, part, fname):
        return dict(self.images[fname])


def _batch(objective, seed=0):
    src = _Source()
    return objective.collate([objective.build_example(src, i, np.random.default_rng(seed + i)) for i in range(4)])


def test_regions_first_and_region_slots_never_text_targets():
    batch = _batch(VtlmcObjective(MaskingConfig(mask_prob=0.5)))
    model = tiny_xlm().eval()
    hidden, mask = model(batch, batch["region_masked"])
    assert hidden.shape[:2] == (4, 4 + batch["input_ids"].size(1))  # Ni = 4 regions, then text
    assert mask[:, :4].tolist() == batch["img_valid"].tolist()
    assert batch["txt_mask"][batch["txt_labels"] != -1].all()  # targets only on real text
    assert (batch["txt_labels"][:, 0] == -1).all()  # never the first position


def test_masked_region_feature_does_not_reach_the_model():
    batch = _batch(VtlmcObjective(MaskingConfig()))
    masked = torch.zeros_like(batch["img_valid"])
    masked[0, 0] = True
    model = tiny_xlm().eval()
    before = model.embed_regions(batch["img_feat"], batch["img_pos_feat"], masked)
    batch["img_feat"][0, 0] += 5.0
    after = model.embed_regions(batch["img_feat"], batch["img_pos_feat"], masked)
    assert torch.equal(before[0, 0], after[0, 0]) and not torch.equal(before[0, 1:2], before[0, 0:1])


def test_tlm_ablation_has_no_image():
    batch = _batch(TlmcObjective(MaskingConfig()))
    assert batch["img_feat"].size(1) == 0 and "region_target" not in batch
    hidden, _ = tiny_xlm()(batch, use_image=False)
    assert hidden.size(1) == batch["input_ids"].size(1)


@pytest.mark.parametrize("objective_cls", [VtlmcObjective, TlmcObjective])
def test_a_few_steps_lower_the_loss_on_the_seed_model(objective_cls):
    torch.manual_seed(0)
    objective = objective_cls(MaskingConfig(mask_prob=0.3))
    model = tiny_xlm(dropout=0.0, attention_dropout=0.0, visual_dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = [_batch(objective, seed=s) for s in range(4)]
    losses = []
    for step in range(30):
        batch = batches[step % 4]
        loss, logs = objective.compute_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert ("mrc_loss" in logs) == bool(objective.use_image and batch["region_target"].any())
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])


def test_validation_reports_perplexity():
    objective = VtlmcObjective(MaskingConfig()).for_validation()
    batch = _batch(objective)
    assert "region_target" not in batch  # images unmasked in validation
    stats = objective.eval_stats(tiny_xlm().eval(), batch)
    metrics = objective.finalize(stats)
    assert metrics["ppl"] == pytest.approx(np.exp(metrics["loss"]))
    assert metrics["ppl"] > 1.0
