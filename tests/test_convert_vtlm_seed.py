"""The converter of the seed's pickled checkpoints and features (fixtures written by our own code): it reads
the numpy arrays they hold and refuses, without running it, any pickle that names anything else."""
from __future__ import annotations

import argparse
import pickle

import numpy as np
import pytest
import torch

from model.xlm import XlmConfig, XlmModel, load_xlm_checkpoint
from scripts import convert_vtlm_seed
from tests.test_security import _MakesDir
from utils.errors import CheckpointError, DataError


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


def test_a_plain_weights_only_load_refuses_the_seed_file(tmp_path):
    """Why the converter exists: the seed's params hold a numpy array, which weights_only refuses."""
    _seed_checkpoint(tmp_path / "seed.pth")
    with pytest.raises(Exception, match="numpy"):
        torch.load(tmp_path / "seed.pth", weights_only=True)


def test_a_checkpoint_that_names_other_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"model": {"w": torch.zeros(2)}, "params": {"evil": _MakesDir(marker)}}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'bad.pth'}: refused: the checkpoint names posix.mkdir"):
        convert_vtlm_seed.main(["checkpoint", "--input", str(tmp_path / "bad.pth"), "--out", str(tmp_path / "o")])
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_a_feature_pickle_that_names_other_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "code_ran"
    (tmp_path / "in").mkdir()
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / "in" / "1.pkl"
        path.write_bytes(pickle.dumps({"detection_boxes": np.zeros((1, 4)), "x": [_MakesDir(marker)]}, protocol))
        with pytest.raises(DataError, match=rf"{path}: refused: the pickle names posix.mkdir"):
            convert_vtlm_seed.main(["features", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "o")])
        assert not marker.exists() and not list((tmp_path / "o").glob("*.npz"))


def test_checkpoint_converts_to_a_strictly_loadable_model(tmp_path):
    original = _seed_checkpoint(tmp_path / "seed.pth")
    convert_vtlm_seed.main(["checkpoint", "--input", str(tmp_path / "seed.pth"), "--out", str(tmp_path / "o")])
    model = XlmModel(XlmConfig.from_json(tmp_path / "o" / "xlm_model.json"))
    load_xlm_checkpoint(model, tmp_path / "o" / "model_final.pt")
    for key, value in original.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.cfg.lang2id == {"de": 0, "en": 1, "img": 2} and model.cfg.box_dim == 4
    assert (tmp_path / "o" / "dict.txt").read_text().split() == ["<s>", "</s>", "<pad>"]


def test_a_namespace_params_checkpoint_converts_too(tmp_path):
    original = _seed_checkpoint(tmp_path / "seed.pth")
    raw = convert_vtlm_seed.load_seed_checkpoint(tmp_path / "seed.pth")
    raw["params"] = argparse.Namespace(**raw["params"])  # older XLM runs saved the namespace itself
    torch.save(raw, tmp_path / "ns.pth")
    convert_vtlm_seed.main(["checkpoint", "--input", str(tmp_path / "ns.pth"), "--out", str(tmp_path / "o")])
    model = XlmModel(XlmConfig.from_json(tmp_path / "o" / "xlm_model.json"))
    load_xlm_checkpoint(model, tmp_path / "o" / "model_final.pt")
    assert model.cfg.lang2id == {"de": 0, "en": 1, "img": 2}
    assert torch.equal(model.state_dict()["embeddings.weight"], original.state_dict()["embeddings.weight"])


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_features_become_npz_with_boxes_reordered(tmp_path, protocol):
    raw = {"detection_boxes": np.array([[0.1, 0.2, 0.5, 0.6]]), "detection_classes": np.array([7], np.uint16),
           "detection_scores": np.array([0.9]), "detection_features": np.ones((1, 1536)),
           "num_detections": np.int64(1)}
    (tmp_path / "in").mkdir()
    with (tmp_path / "in" / "123.pkl").open("wb") as fh:
        pickle.dump(raw, fh, protocol)
    convert_vtlm_seed.main(["features", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "o")])
    out = np.load(tmp_path / "o" / "123.npz")
    assert np.allclose(out["norm_bb"], [[0.2, 0.1, 0.6, 0.5, 0.4, 0.4]])
    assert out["soft_labels"].shape == (1, 601) and out["soft_labels"][0].argmax() == 7
    assert out["features"].shape == (1, 1536) and out["conf"].shape == (1, 1)


def test_a_feature_pickle_from_numpy_1_reads(tmp_path):
    """Seed files were written under numpy 1.x, whose arrays name numpy.core.multiarray (numpy 2: _core)."""
    data = pickle.dumps({"detection_features": np.arange(6.0).reshape(2, 3)}, protocol=2)
    assert b"numpy._core.multiarray" in data  # protocol 2 names globals as text lines
    (tmp_path / "old.pkl").write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    raw = convert_vtlm_seed.load_feature_pickle(tmp_path / "old.pkl")
    assert np.array_equal(raw["detection_features"], np.arange(6.0).reshape(2, 3))
