"""The opt-in converter of the seed's pickled checkpoints and features (fixtures written by our own code)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from model.xlm import XlmConfig, XlmModel, load_xlm_checkpoint
from scripts import convert_vtlm_seed


def _seed_checkpoint(path):
    torch.manual_seed(0)
    cfg = XlmConfig(vocab_size=30, dim=16, n_layers=2, n_heads=2, ffn_dim=32, langs=["de", "en"], pad_index=2,
                    mask_index=5, img_dim=12, num_classes=601, max_positions=20)
    model = XlmModel(cfg)
    params = {"n_heads": 2, "dropout": 0.1, "attention_dropout": 0.1, "lang2id": {"de": 0, "en": 1, "img": 2},
              "pad_index": 2, "mask_index": 5, "some_array": np.zeros(3)}  # numpy: weights_only refuses it
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "params": params,
                "dico_id2word": {0: "<s>", 1: "</s>", 2: "<pad>"}}, path)
    return model


def test_refused_without_trust_and_unloadable_safely(tmp_path):
    _seed_checkpoint(tmp_path / "seed.pth")
    with pytest.raises(Exception):
        torch.load(tmp_path / "seed.pth", weights_only=True)
    with pytest.raises(SystemExit, match="--trust_pickle"):
        convert_vtlm_seed.main(["checkpoint", "--input", str(tmp_path / "seed.pth"), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_checkpoint_converts_to_a_strictly_loadable_model(tmp_path):
    original = _seed_checkpoint(tmp_path / "seed.pth")
    convert_vtlm_seed.main(["checkpoint", "--trust_pickle", "--input", str(tmp_path / "seed.pth"),
                            "--out", str(tmp_path / "o")])
    model = XlmModel(XlmConfig.from_json(tmp_path / "o" / "xlm_model.json"))
    load_xlm_checkpoint(model, tmp_path / "o" / "model_final.pt")
    for key, value in original.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.cfg.lang2id == {"de": 0, "en": 1, "img": 2} and model.cfg.box_dim == 4
    assert (tmp_path / "o" / "dict.txt").read_text().split() == ["<s>", "</s>", "<pad>"]


def test_features_become_npz_with_boxes_reordered(tmp_path):
    raw = {"detection_boxes": np.array([[0.1, 0.2, 0.5, 0.6]]), "detection_classes": np.array([7], np.uint16),
           "detection_scores": np.array([0.9]), "detection_features": np.ones((1, 1536)), "num_detections": 1}
    (tmp_path / "in").mkdir()
    with (tmp_path / "in" / "123.pkl").open("wb") as fh:
        pickle.dump(raw, fh)
    convert_vtlm_seed.main(["features", "--trust_pickle", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "o")])
    out = np.load(tmp_path / "o" / "123.npz")
    assert np.allclose(out["norm_bb"], [[0.2, 0.1, 0.6, 0.5, 0.4, 0.4]])
    assert out["soft_labels"].shape == (1, 601) and out["soft_labels"][0].argmax() == 7
    assert out["features"].shape == (1, 1536) and out["conf"].shape == (1, 1)
