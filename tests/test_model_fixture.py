"""The UC2 model reproduces the outputs of the ORIGINAL UC2 code on its tiny fixture model.

Fixture: ../shared/fixtures/uc2_original/model (see its README): weights saved by the original code
(float32 and apex-O2 float16) and outputs it computed in eval mode for three packed examples.
"""
import json

import numpy as np
import pytest
import torch

from model.config import UC2ModelConfig
from model.model import UC2ForImageTextRetrieval, UC2ForPretraining, UC2ForVQA, gather_positions
from model.weights import load_uc2_checkpoint
from utils.errors import ConfigError

CLS, SEP = 0, 2


def make_batch(texts, feats, boxes, positions=None, img_masks=None):
    """Tiny stand-in for data/collate.py: texts are id lists WITH <s>/</s>; feats (n_i, D); boxes
    (n_i, 6) norm_bb. Packs each example as text, then regions, then padding (UNITER gather_index)."""
    b, lt, ni = len(texts), max(map(len, texts)), max(len(f) for f in feats)
    input_ids = torch.ones(b, lt, dtype=torch.long)  # pad id 1
    position_ids = torch.ones(b, lt, dtype=torch.long)  # pad position 1
    img_feat = torch.zeros(b, ni, feats[0].shape[1])
    img_pos = torch.zeros(b, ni, 7)
    length = max(len(t) + len(f) for t, f in zip(texts, feats))
    attn = torch.zeros(b, length, dtype=torch.long)
    gather = torch.arange(length).repeat(b, 1)
    for i, (text, feat, box) in enumerate(zip(texts, feats, boxes)):
        n_t, n_i = len(text), len(feat)
        input_ids[i, :n_t] = torch.tensor(text)
        position_ids[i, :n_t] = torch.tensor(positions[i]) if positions else torch.arange(2, 2 + n_t)
        box = torch.as_tensor(box, dtype=torch.float32)
        img_feat[i, :n_i] = torch.as_tensor(feat)
        img_pos[i, :n_i] = torch.cat([box, box[:, 4:5] * box[:, 5:6]], dim=1)
        attn[i, :n_t + n_i] = 1
        gather[i, n_t:n_t + n_i] = torch.arange(lt, lt + n_i)
    batch = dict(input_ids=input_ids, position_ids=position_ids, img_feat=img_feat, img_pos_feat=img_pos,
                 attn_masks=attn, gather_index=gather)
    if img_masks is not None:
        batch["img_masks"] = img_masks
    return batch


@pytest.fixture(scope="module")
def fx(orig_fixtures):
    root = orig_fixtures / "model"
    cases = json.loads((root / "cases.json").read_text())
    arrays = dict(np.load(root / "cases.npz"))
    config = UC2ModelConfig.from_json(root / "config.json")
    config.img_dim, config.img_label_dim = cases["img_dim"], cases["img_label_dim"]
    texts = [[CLS, *ex["text"], SEP] for ex in cases["examples"]]
    feats = [arrays[ex["feat_key"]] for ex in cases["examples"]]
    boxes = [arrays[ex["norm_bb_key"]] for ex in cases["examples"]]
    return dict(root=root, cases=cases, arrays=arrays, config=config, texts=texts, feats=feats, boxes=boxes)


def _model(fx, weights="state_dict.pt", **overrides):
    config = UC2ModelConfig.from_dict({**fx["config"].to_dict(), **overrides})
    model = UC2ForPretraining(config).eval()
    load_uc2_checkpoint(model, fx["root"] / weights, strict_heads=True)
    return model


def _outputs(model, fx):
    """Every output the fixture records, computed by our model."""
    cases, texts, feats, boxes = fx["cases"], fx["texts"], fx["feats"], fx["boxes"]
    out = {}
    with torch.no_grad():
        seq = model(**make_batch(texts, feats, boxes))
        for i, text in enumerate(texts):
            out[f"hidden_{i}"] = seq[i, :len(text) + len(feats[i])]
        out["pooled"] = model.roberta.pooler(seq)
        out["itm_logits"] = model.itm_logits(seq)
        masked = [list(t) for t in texts]
        for ex, pos in cases["mlm_mask_positions"]:
            masked[ex][pos] = cases["mask_token_id"]
        mlm_batch = make_batch(masked, feats, boxes)
        out["mlm_input_ids"] = mlm_batch["input_ids"]
        token_mask = torch.zeros_like(mlm_batch["attn_masks"], dtype=torch.bool)
        for ex, pos in cases["mlm_mask_positions"]:
            token_mask[ex, pos] = True
        out["mlm_scores"] = model.cls(gather_positions(model(**mlm_batch), token_mask))
        img_masks = torch.zeros(len(texts), max(len(f) for f in feats), dtype=torch.bool)
        region_mask = torch.zeros(len(texts), seq.shape[1], dtype=torch.bool)
        for ex, reg in cases["mrtm_masked_regions"]:
            img_masks[ex, reg] = True
            region_mask[ex, len(texts[ex]) + reg] = True
        mrtm_seq = model(**make_batch(texts, feats, boxes, img_masks=img_masks))
        out["mrtm_scores"] = model.cls(gather_positions(mrtm_seq, region_mask))
        vt = cases["vtlm"]
        ex = vt["image_example"]
        vt_batch = make_batch([vt["input_ids"]], [feats[ex]], [boxes[ex]], positions=[vt["position_ids"]])
        out["vtlm_hidden"] = model(**vt_batch)[0]
    return out


def test_fp32_checkpoint_reproduces_original_outputs(fx):
    out = _outputs(_model(fx), fx)
    assert torch.equal(out.pop("mlm_input_ids"), torch.from_numpy(fx["arrays"]["mlm_input_ids"]))
    for name, value in out.items():
        expected = torch.from_numpy(fx["arrays"][name])
        assert value.shape == expected.shape, name
        diff = (value - expected).abs().max().item()
        assert diff < 1e-4, f"{name}: max abs diff {diff}"


def test_encoder_eps_1e12_is_what_the_original_used(fx):
    """With eps 1e-5 inside the encoder the hidden states drift measurably from the original's."""
    exact = _outputs(_model(fx), fx)["hidden_1"]
    hf_eps = _outputs(_model(fx, encoder_layer_norm_eps=None), fx)["hidden_1"]
    expected = torch.from_numpy(fx["arrays"]["hidden_1"])
    assert (exact - expected).abs().max() < 2e-6
    assert (hf_eps - expected).abs().max() > 5e-6


def test_fp16_checkpoint_close_to_fp32_outputs(fx):
    out = _outputs(_model(fx, weights="state_dict_fp16.pt"), fx)
    for name in ("hidden_0", "pooled", "itm_logits", "mlm_scores", "mrtm_scores", "vtlm_hidden"):
        diff = (out[name] - torch.from_numpy(fx["arrays"][name])).abs().max().item()
        assert diff < 2e-2, f"{name}: max abs diff {diff}"


def test_fp16_checkpoint_loaded_two_ways_agrees(fx):
    """From the file path, and from the tensors cast to float32 by hand: identical outputs."""
    by_path = _outputs(_model(fx, weights="state_dict_fp16.pt"), fx)
    state = torch.load(fx["root"] / "state_dict_fp16.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values())
    model = UC2ForPretraining(fx["config"]).eval()
    load_uc2_checkpoint(model, {k: v.float() for k, v in state.items()})
    by_hand = _outputs(model, fx)
    for name, value in by_path.items():
        assert torch.equal(value, by_hand[name]), name


def test_masked_region_feature_is_ignored(fx):
    """A masked region's own feature must not influence the output (it is zeroed before projection)."""
    model = _model(fx)
    img_masks = torch.zeros(3, max(len(f) for f in fx["feats"]), dtype=torch.bool)
    img_masks[0, 1] = True
    batch = make_batch(fx["texts"], fx["feats"], fx["boxes"], img_masks=img_masks)
    noisy = dict(batch, img_feat=batch["img_feat"].clone())
    noisy["img_feat"][0, 1] += 5.0
    with torch.no_grad():
        assert torch.allclose(model(**batch), model(**noisy), atol=1e-6)
        assert not torch.allclose(model(**batch), model(**dict(batch, img_masks=None)), atol=1e-3)


def test_retrieval_model_from_pretraining_checkpoint_scores_like_itm_match(fx):
    """rank_output starts as itm_output's 'match' row, so its logit equals itm_logits[:, 1]."""
    model = UC2ForImageTextRetrieval(fx["config"]).eval()
    report = load_uc2_checkpoint(model, fx["root"] / "state_dict.pt", strict_heads=True)
    assert report.initialised == {"rank_output": "itm_output row 1"}
    with torch.no_grad():
        scores = model(**make_batch(fx["texts"], fx["feats"], fx["boxes"]))
    assert scores.shape == (3,)
    assert torch.allclose(scores, torch.from_numpy(fx["arrays"]["itm_logits"][:, 1]), atol=1e-4)


def test_vqa_model_shapes_and_heads(fx):
    model = UC2ForVQA(fx["config"], num_answers=7).eval()
    load_uc2_checkpoint(model, fx["root"] / "state_dict.pt", strict_heads=True)
    assert [type(m).__name__ for m in model.vqa_output] == ["Linear", "GELU", "LayerNorm", "Linear"]
    assert model.vqa_output[0].weight.shape == (64, 32) and model.vqa_output[3].weight.shape == (7, 64)
    with torch.no_grad():
        logits = model(**make_batch(fx["texts"], fx["feats"], fx["boxes"]))
    assert logits.shape == (3, 7)
    pooled = torch.from_numpy(fx["arrays"]["pooled"])
    assert torch.allclose(logits, model.vqa_output(pooled), atol=1e-4)


def test_pretraining_heads_shapes(fx):
    model = _model(fx)
    hidden = torch.randn(5, 32)
    assert model.region_classifier(hidden).shape == (5, 1601)
    assert model.feat_regress(hidden).shape == (5, 40)
    assert model.feat_regress.weight is model.roberta.img_embeddings.img_linear.weight


def test_fresh_init_is_bert_like():
    config = UC2ModelConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=24, max_position_embeddings=20, img_dim=6, img_label_dim=5)
    model = UC2ForPretraining(config)
    emb = model.roberta.embeddings
    assert torch.all(emb.word_embeddings.weight[1] == 0) and torch.all(emb.position_embeddings.weight[1] == 0)
    assert torch.all(model.roberta.img_embeddings.mask_embedding.weight[0] == 0)
    assert torch.all(model.cls.bias == 0) and torch.all(model.cls.layer_norm.weight == 1)
    assert 0.015 < emb.word_embeddings.weight[2:].std().item() < 0.025


def test_dropout_only_in_training(fx):
    model = _model(fx)
    batch = make_batch(fx["texts"], fx["feats"], fx["boxes"])
    with torch.no_grad():
        assert torch.equal(model(**batch), model(**batch))
        model.train()
        assert not torch.allclose(model(**batch), model(**batch))


def test_config_errors_name_file_and_key(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"hidden_size": 32, "num_attention_heads": 4, "hiden_act": "gelu"}))
    with pytest.raises(ConfigError, match=r"cfg.json: unknown model config key 'hiden_act'"):
        UC2ModelConfig.from_json(path)
    path.write_text(json.dumps({"hidden_size": "32"}))
    with pytest.raises(ConfigError, match=r"cfg.json: key 'hidden_size' expects int, got '32'"):
        UC2ModelConfig.from_json(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cfg.json: cannot read model config JSON"):
        UC2ModelConfig.from_json(path)
    config = UC2ModelConfig.xlmr_base(img_dim=40)
    config.to_json(path)
    assert UC2ModelConfig.from_json(path) == config
    shape = (config.hidden_size, config.num_hidden_layers, config.vocab_size, config.encoder_eps)
    assert shape == (768, 12, 250002, 1e-12)
