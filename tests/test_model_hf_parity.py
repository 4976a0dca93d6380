"""Our text path equals Hugging Face XLM-R on the same (random, tiny) weights, loaded via init_from_xlmr."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from model.config import UC2ModelConfig  # noqa: E402
from model.model import UC2ForPretraining, UC2ForVQA  # noqa: E402
from model.weights import init_from_xlmr  # noqa: E402


def _perturbed(module, seed):
    """Every parameter random (LayerNorms included), so a wrong mapping cannot pass by accident."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3 + (1.0 if param.dim() == 1 else 0.0))
    return module.eval()


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    config = transformers.XLMRobertaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=40, type_vocab_size=1, layer_norm_eps=1e-5)
    torch.manual_seed(0)
    mlm = _perturbed(transformers.XLMRobertaForMaskedLM(config), 1)
    base = _perturbed(transformers.XLMRobertaModel(config), 2)
    root = tmp_path_factory.mktemp("hf")
    mlm.save_pretrained(root / "mlm")
    base.save_pretrained(root / "base")
    return dict(root=root, mlm=mlm, base=base)


def _text_batch():
    """Two sequences, the second padded; XLM-R positions (first real token 2, padding 1)."""
    ids = torch.tensor([[0, 5, 17, 42, 8, 2], [0, 9, 33, 2, 1, 1]])
    mask = (ids != 1).long()
    positions = torch.cumsum(mask, dim=1) * mask + 1
    return ids, mask, positions


def _our_model(folder, cls=UC2ForPretraining, **kwargs):
    config = UC2ModelConfig.from_json(folder / "config.json")
    config = UC2ModelConfig.from_dict({**config.to_dict(), "encoder_layer_norm_eps": None, "img_dim": 12})
    model = cls(config, **kwargs) if kwargs else cls(config)
    return model.eval(), init_from_xlmr(model, folder, text_type_from_xlmr=True)


def test_hidden_states_and_mlm_logits_match_hf(hf_folders):
    model, report = _our_model(hf_folders["root"] / "mlm")
    ids, mask, positions = _text_batch()
    with torch.no_grad():
        ref = hf_folders["mlm"].roberta(input_ids=ids, attention_mask=mask).last_hidden_state
        ours = model(ids, positions, attn_masks=mask)
        real = mask.bool()
        assert (ours[real] - ref[real]).abs().max() < 1e-5
        ref_logits = hf_folders["mlm"].lm_head(ref[real])
        assert (model.cls(ours[real]) - ref_logits).abs().max() < 1e-4
    assert {"cls.dense.weight", "cls.layer_norm.weight", "cls.bias"} <= set(report.loaded)


def test_base_model_pooler_matches_hf(hf_folders):
    """XLMRobertaModel files have no ``roberta.`` prefix and carry a pooler."""
    model, report = _our_model(hf_folders["root"] / "base", UC2ForVQA, num_answers=3)
    ids, mask, positions = _text_batch()
    with torch.no_grad():
        ref = hf_folders["base"](input_ids=ids, attention_mask=mask)
        ours = model.roberta(ids, positions, attn_masks=mask)
        assert (model.roberta.pooler(ours) - ref.pooler_output).abs().max() < 1e-5
    assert "roberta.pooler.dense.weight" in report.loaded
    assert any(k.startswith("vqa_output.") for k in report.missing)


def test_default_keeps_new_type_table_and_image_embeddings_fresh(hf_folders):
    config = UC2ModelConfig.from_json(hf_folders["root"] / "mlm" / "config.json")
    model = UC2ForPretraining(UC2ModelConfig.from_dict({**config.to_dict(), "img_dim": 12}))
    before = model.roberta.embeddings.new_token_type_embeddings.weight.clone()
    report = init_from_xlmr(model, hf_folders["root"] / "mlm")
    assert torch.equal(model.roberta.embeddings.new_token_type_embeddings.weight, before)
    assert "roberta.embeddings.new_token_type_embeddings.weight" in report.missing
    assert "roberta.img_embeddings.img_linear.weight" in report.missing
    assert "embeddings.token_type_embeddings.weight" in report.unexpected
    hf_words = hf_folders["mlm"].roberta.embeddings.word_embeddings.weight
    assert torch.equal(model.roberta.embeddings.word_embeddings.weight, hf_words)
    assert torch.equal(model.cls.decoder.weight, hf_words)  # still tied after loading


def test_hf_config_json_reads_as_uc2_config(hf_folders):
    config = UC2ModelConfig.from_json(hf_folders["root"] / "mlm" / "config.json")
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (100, 32, 37)
    assert config.type_vocab_size == 2  # XLM-R's single row is not UC2's text/image table
    assert config.layer_norm_eps == 1e-5


def test_hf_config_extra_keys_ignored_but_types_checked(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "xlm-roberta", "hidden_size": 64, "num_attention_heads": 4, '
                    '"some_new_hf_option": true, "num_beams": 1}')
    assert UC2ModelConfig.from_json(path).hidden_size == 64
    path.write_text('{"model_type": "xlm-roberta", "layer_norm_eps": "tiny"}')
    with pytest.raises(ValueError, match=r"config.json: config key 'layer_norm_eps': expected float, got 'tiny'"):
        UC2ModelConfig.from_json(path)
