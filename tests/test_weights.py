"""Loading and saving UC2 weights: round trips, fp16, aliases, bad files, head initialisation."""
import json
import logging
import pickle

import pytest
import torch

from utils.errors import DataError
from model.config import UC2ModelConfig
from model.model import UC2ForImageTextRetrieval, UC2ForPretraining, UC2ForVQA
from model.weights import init_from_xlmr, load_uc2_checkpoint, save_uc2_checkpoint, save_uc2_state_dict

TINY = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
            max_position_embeddings=20, img_dim=6, img_label_dim=5)


def tiny(cls=UC2ForPretraining, seed=0, **kwargs):
    torch.manual_seed(seed)
    return cls(UC2ModelConfig(**TINY), **kwargs).eval()


def inputs():
    """Two examples: 4 text tokens and 3 regions each, no padding (B=2, L=7)."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 50, (2, 4), generator=gen)
    return dict(input_ids=ids, position_ids=torch.arange(2, 6).repeat(2, 1),
                img_feat=torch.randn(2, 3, 6, generator=gen), img_pos_feat=torch.rand(2, 3, 7, generator=gen),
                attn_masks=torch.ones(2, 7, dtype=torch.long), gather_index=torch.arange(7).repeat(2, 1))


def test_save_load_round_trip(tmp_path):
    src, dst = tiny(seed=1), tiny(seed=2)
    path = save_uc2_checkpoint(src, tmp_path / "model.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left behind
    report = load_uc2_checkpoint(dst, path, strict_heads=True)
    assert report.missing == [] and report.unexpected == []
    for key, value in src.state_dict().items():
        assert torch.equal(value, dst.state_dict()[key]), key
    with torch.no_grad():
        assert torch.equal(src(**inputs()), dst(**inputs()))
    assert dst.cls.decoder.weight is dst.roberta.embeddings.word_embeddings.weight  # tie survives


def test_saved_keys_are_the_original_keys(orig_fixtures):
    """Our pretraining model saves exactly the original checkpoint's names (vis_cls aside), fp32."""
    original = torch.load(orig_fixtures / "model" / "state_dict.pt", weights_only=True)
    config = UC2ModelConfig.from_dict({**json.loads((orig_fixtures / "model" / "config.json").read_text()),
                                       "img_dim": 40})
    ours = save_uc2_state_dict(UC2ForPretraining(config))
    assert set(ours) == {k for k in original if not k.startswith("vis_cls.")}
    assert {"cls.decoder.weight", "cls.decoder.bias", "feat_regress.weight"} <= set(ours)
    assert all(v.dtype == torch.float32 and v.shape == original[k].shape for k, v in ours.items())


def test_fp16_file_loads_as_fp32(tmp_path):
    src = tiny(seed=1)
    half = {k: v.half() for k, v in save_uc2_state_dict(src).items()}
    torch.save(half, tmp_path / "half.pt")
    dst = tiny(seed=2)
    load_uc2_checkpoint(dst, tmp_path / "half.pt")
    weight = dst.roberta.encoder.layer[0].attention.self.query.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, half["roberta.encoder.layer.0.attention.self.query.weight"].float())


def test_vis_cls_ignored_with_one_log_line(caplog):
    state = save_uc2_state_dict(tiny(seed=1))
    state["vis_cls.dense.weight"] = torch.zeros(16, 16)
    state["vis_cls.bias"] = torch.zeros(7)
    with caplog.at_level(logging.INFO, logger="model.weights"):
        report = load_uc2_checkpoint(tiny(seed=2), state, strict_heads=True)
    assert report.ignored == ["vis_cls.bias", "vis_cls.dense.weight"]
    assert report.unexpected == []
    assert sum("vis_cls" in r.getMessage() and "ignoring" in r.getMessage() for r in caplog.records) == 1


def test_wrong_hidden_size_names_key_and_shapes():
    state = save_uc2_state_dict(tiny())
    model = UC2ForPretraining(UC2ModelConfig(**{**TINY, "hidden_size": 8}))
    with pytest.raises(DataError, match=r"shape mismatch for 'roberta\.embeddings\.word_embeddings\.weight': "
                                        r"checkpoint \(50, 16\), model \(50, 8\)"):
        load_uc2_checkpoint(model, state)


def test_truncated_file_is_a_clear_error(tmp_path, orig_fixtures):
    data = (orig_fixtures / "model" / "state_dict.pt").read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="cut.pt: not a readable weights-only torch checkpoint"):
        load_uc2_checkpoint(tiny(), path)


def test_non_dict_file_is_a_clear_error(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(DataError, match=r"list.pt: expected a state dict .* got list"):
        load_uc2_checkpoint(tiny(), tmp_path / "list.pt")
    torch.save({"a": 3}, tmp_path / "ints.pt")
    with pytest.raises(DataError, match=r"ints.pt: expected a state dict of tensors, key 'a' holds int"):
        load_uc2_checkpoint(tiny(), tmp_path / "ints.pt")


class _Payload:
    """Unpickling this would create ``marker`` (a harmless stand-in for malicious code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        torch.save({"roberta.pooler.dense.bias": _Payload(marker)}, fh, pickle_module=pickle)
    with pytest.raises(DataError, match="evil.pt: not a readable weights-only"):
        load_uc2_checkpoint(tiny(), path)
    assert not marker.exists()


def test_retrieval_rank_output_from_itm_row_1():
    src = tiny(seed=1)
    model = tiny(UC2ForImageTextRetrieval, seed=2)
    report = load_uc2_checkpoint(model, save_uc2_state_dict(src), strict_heads=True)
    assert torch.equal(model.rank_output.weight, src.itm_output.weight[1:2])
    assert torch.equal(model.rank_output.bias, src.itm_output.bias[1:2])
    assert report.initialised == {"rank_output": "itm_output row 1"}
    assert report.missing == []
    assert {"cls.bias", "region_classifier.net.0.weight"} <= set(report.unexpected)  # expected leftovers


def test_vqa_head_reported_missing_and_backbone_required():
    state = save_uc2_state_dict(tiny(seed=1))
    report = load_uc2_checkpoint(tiny(UC2ForVQA, num_answers=4), state, strict_heads=True)
    assert report.missing == ["vqa_output.0.weight", "vqa_output.0.bias", "vqa_output.2.weight",
                              "vqa_output.2.bias", "vqa_output.3.weight", "vqa_output.3.bias"]
    partial = {k: v for k, v in state.items() if k.startswith("roberta.img_embeddings.")}
    with pytest.raises(DataError, match="backbone tensors missing.*roberta.embeddings.word_embeddings"):
        load_uc2_checkpoint(tiny(), partial)
    report = load_uc2_checkpoint(tiny(seed=3), partial, allow_partial=True)
    assert set(report.loaded) == set(partial)


def test_strict_heads_rejects_unknown_leftovers():
    state = save_uc2_state_dict(tiny(seed=1))
    state["something_else.weight"] = torch.zeros(2)
    assert "something_else.weight" in load_uc2_checkpoint(tiny(), state).unexpected
    with pytest.raises(DataError, match="strict_heads.*something_else.weight"):
        load_uc2_checkpoint(tiny(), state, strict_heads=True)


def test_init_from_xlmr_maps_lm_head_into_cls(tmp_path):
    """A pytorch_model.bin in HF layout (``roberta.*`` + ``lm_head.*``) fills cls.dense/layer_norm/bias."""
    src = save_uc2_state_dict(tiny(seed=1))
    hf = {k: v for k, v in src.items() if k.startswith(("roberta.embeddings.word", "roberta.embeddings.position",
                                                         "roberta.embeddings.Layer", "roberta.encoder."))}
    hf["roberta.embeddings.token_type_embeddings.weight"] = torch.randn(1, 16)
    for name in ("dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias"):
        hf[f"lm_head.{name}"] = src[f"cls.{name}"]
    hf["lm_head.bias"] = torch.randn(50)
    hf["lm_head.decoder.weight"] = src["roberta.embeddings.word_embeddings.weight"]
    torch.save(hf, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "xlm-roberta", **TINY}))
    model = tiny(seed=2)
    report = init_from_xlmr(model, tmp_path)
    assert torch.equal(model.cls.dense.weight, src["cls.dense.weight"])
    assert torch.equal(model.cls.layer_norm.bias, src["cls.layer_norm.bias"])
    assert torch.equal(model.cls.bias, hf["lm_head.bias"]) and model.cls.decoder.bias is model.cls.bias
    assert torch.equal(model.roberta.encoder.layer[1].output.dense.weight,
                       src["roberta.encoder.layer.1.output.dense.weight"])
    assert "lm_head.decoder.weight" in report.tied_aliases
    assert "roberta.img_embeddings.img_linear.weight" in report.missing


def test_init_from_xlmr_wrong_folder(tmp_path):
    with pytest.raises(DataError, match="no model.safetensors or pytorch_model.bin"):
        init_from_xlmr(tiny(), tmp_path)


def test_legacy_torch_format_loads(tmp_path):
    """Checkpoints written by torch < 1.6 (non-zip format), as old releases may be, load too."""
    src = tiny(seed=1)
    torch.save({k: v.half() for k, v in save_uc2_state_dict(src).items()}, tmp_path / "old.pt",
               _use_new_zipfile_serialization=False)
    dst = tiny(seed=2)
    load_uc2_checkpoint(dst, tmp_path / "old.pt", strict_heads=True)
    assert torch.equal(dst.itm_output.weight, src.itm_output.weight.half().float())
