"""train_mla.py end to end on a small demo corpus: native English dual encoder -> NLT -> LE, English scores bit
for bit, frozen weights, resume after a crash, and the data rules (batches, one caption per image, errors)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from utils.errors import DataError
from data.mla_data import EpochBatches, ImageCaptions, ParallelText, item_rngs
from model.weights import read_state_file
from utils.config import ConfigError

LANGS = ["de", "ja"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory, monkeypatch_module):
    from scripts.make_demo_data import build_demo_corpus

    root = tmp_path_factory.mktemp("mla_demo")
    build_demo_corpus(root / "data", n_train=96, n_val=16, n_test=24, progress=False)
    monkeypatch_module.setenv("UC2_DEMO_DIR", str(root))
    torch.set_num_threads(1)
    return root


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _config(demo, stage: str, out: str, steps: int, **extra) -> str:
    """A small run config derived from the shipped demo configs, written into the demo folder."""
    from scripts import mla_demo

    if stage == "native":
        cfg = mla_demo._base("native")
        cfg["native"] = {"config": str(mla_demo.REPO_ROOT / "config" / "mla_demo_native_model.json")}
        cfg.update(languages=[{"lang": "en", "caption_db": str(
            demo / "data/txt_db/cap_en_train.db")}], test_datasets=mla_demo._tests(["en", *LANGS]))
    else:
        cfg = mla_demo._run_cfg(stage, out, {"nlt": steps, "le": steps, "batch": 8}, LANGS)
        cfg["languages"] = mla_demo._languages(stage, LANGS)
        cfg["acquisition"]["embedding_init"] = ""
    cfg["output_dir"] = str(demo / out)
    cfg.update({"num_train_steps": steps, "warmup_steps": 1, "batch_size": 8, "valid_steps": 0, "save_steps": steps,
                **extra})
    path = demo / f"{out.replace('/', '_')}.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def stages(demo):
    """native (12 steps) -> NLT (6) -> LE (4) through train_mla.main."""
    import train_mla

    train_mla.main(["--config", _config(demo, "native", "mla/native", 12)])
    train_mla.main(["--config", _config(demo, "nlt", "mla/nlt", 6)])
    train_mla.main(["--config", _config(demo, "le", "mla/le", 4, setting="MLA: NLT -> LE", acquisition={
        "embed_width": 128, "init_from": str(demo / "mla" / "nlt" / "model_final.pt")})])
    return demo / "mla"


def _scores(run, lang):
    with np.load(run / "results" / f"scores_demo_{lang}_test.npz", allow_pickle=False) as saved:
        return saved["scores"]


def test_english_scores_and_native_weights_bitwise_through_both_stages(stages):
    native = read_state_file(stages / "native" / "model_final.pt")
    for run in ("nlt", "le"):
        assert np.array_equal(_scores(stages / "native", "en"), _scores(stages / run, "en"))
        ckpt = read_state_file(next((stages / run / "ckpt").glob("model_step_*.pt")))
        assert all(torch.equal(ckpt[f"native.{k}"], v) for k, v in native.items())
        final = read_state_file(stages / run / "model_final.pt")
        assert final and not any(k.startswith("native.") for k in final)  # only θ_emb + acquirers shipped
    assert not np.array_equal(_scores(stages / "nlt", "de"), _scores(stages / "le", "de"))  # LE trained
    detail = json.loads((stages / "le" / "results" / "results.json").read_text(encoding="utf-8"))["detail"]
    assert [(r["lang"], r["setting"]) for r in detail] == [(x, "MLA: NLT -> LE") for x in ("en", *LANGS)]


class _Crash(RuntimeError):
    pass


def _crash_at(step: int):
    def callback(trainer):
        if trainer.step == step:
            raise _Crash(f"simulated crash after step {step}")
    return callback


def test_resume_after_a_crash_equals_one_run(stages):
    import train_mla

    demo = stages.parent
    extra = {"acquisition": {"embed_width": 128, "init_from": str(stages / "nlt" / "model_final.pt")},
             "save_steps": 2}
    train_mla.main(["--config", _config(demo, "le", "mla/le_once", 4, **extra)])
    crashed = _config(demo, "le", "mla/le_crash", 4, **extra)
    with pytest.raises(_Crash):
        train_mla.main(["--config", crashed], callbacks=[_crash_at(3)])  # step-2 checkpoint exists
    train_mla.main(["--config", crashed])
    assert "resumed from step 2" in (stages / "le_crash" / "log.txt").read_text(encoding="utf-8")
    once = read_state_file(stages / "le_once" / "model_final.pt")
    again = read_state_file(stages / "le_crash" / "model_final.pt")
    assert once.keys() == again.keys() and all(torch.equal(once[k], again[k]) for k in once)


def test_epoch_batches_resume_and_rank_slices():
    full = [b for _, b in zip(range(7), EpochBatches(20, 4, seed=3).batches(0))]   # 5 per epoch: crosses one
    tail = [b for _, b in zip(range(4), EpochBatches(20, 4, seed=3).batches(3))]
    assert [e for e, _ in full] == [0] * 5 + [1] * 2
    assert all(ea == eb and np.array_equal(a, b) for (ea, a), (eb, b) in zip(full[3:], tail))
    ranks = [next(EpochBatches(20, 4, seed=3, rank=r, world_size=2).batches(0))[1] for r in (0, 1)]
    assert len(set(np.concatenate(ranks).tolist())) == 8  # the two ranks' halves of one global batch


def test_one_caption_per_image_per_batch(demo):
    from data.img_db import ImgDb
    from data.txt_db import TxtDb

    img = ImgDb(demo / "data/img_db/demo_imgs", 0.2, 100, 3, 36)
    caps = ImageCaptions(TxtDb(demo / "data/txt_db/cap_de_train.db", max_txt_len=None), img, 40)
    assert all(len(c) == 4 for c in caps.captions)
    epoch, idx = next(EpochBatches(len(caps), 16, seed=0).batches(0))
    batch = caps.batch(idx, item_rngs(0, epoch, idx))
    assert len(set(idx.tolist())) == 16 and batch["input_ids"].shape[0] == batch["img_feat"].shape[0] == 16
    assert (batch["input_ids"] == 2).any(dim=1).all()  # every caption keeps its </s>


def test_bad_inputs_are_named(demo):
    from data.txt_db import TxtDb
    from utils.config import load_config
    from training.mla_config import DualRunConfig

    paired = TxtDb(demo / "data/txt_db/paired_en-de_train.db", max_txt_len=None)
    with pytest.raises(DataError, match="paired_en-de_train.db.*expected a en-fr pair"):
        ParallelText(paired, "en", "fr", 40)
    path = _config(demo, "nlt", "bad", 2)
    with pytest.raises(ConfigError, match="en is the frozen native language"):
        load_config(DualRunConfig, path, {"languages": json.dumps([{"lang": "en", "paired_db": "x"}])})


def test_bf16_autocast_run_keeps_english_bitwise(stages):
    """AMP path of the shared trainer (bf16 autocast on CPU): the run trains and English stays the native's."""
    import train_mla

    demo = stages.parent
    train_mla.main(["--config", _config(demo, "nlt", "mla/nlt_bf16", 3, precision="bf16")])
    assert np.array_equal(_scores(stages / "native", "en"), _scores(stages / "nlt_bf16", "en"))
    log = (stages / "nlt_bf16" / "log.txt").read_text(encoding="utf-8")
    assert "loss/nlt_de=" in log and "nan" not in log.lower()
