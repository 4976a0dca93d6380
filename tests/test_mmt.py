"""MMT/NMT from the seed's XLM-style model (decoder init: tests/test_seq2seq_xlm.py): NMT blind to images, any
direction, source degradation, probes' arithmetic, and train_mmt/inf_mmt end to end on a small demo corpus
(en->fr: the direction the seed got wrong), with best checkpoint, early stopping and resume."""
from __future__ import annotations

import json

import pytest
import torch

from tasks.translation import Degradation, degrade_ids
from model.seq2seq import SpecialIds
from model.xlm import XlmConfig, XlmModel
from model.seq2seq_xlm import build_from_xlm
from evaluation.mmt_eval import image_awareness, masked_word_accuracy, permutations, seed_table
from tests.helpers_mmt import one_thread  # noqa: F401 (autouse fixture)

SPECIAL = SpecialIds(bos=0, eos=2, pad=1)



def tiny_xlm(**kw) -> XlmModel:
    cfg = dict(vocab_size=60, dim=32, n_layers=2, n_heads=4, ffn_dim=64, langs=["en", "fr"], mask_index=59,
               img_dim=6, num_classes=5, max_positions=40, dropout=0.0, attention_dropout=0.0, visual_dropout=0.0)
    cfg.update(kw)
    torch.manual_seed(0)
    return XlmModel(XlmConfig(**cfg))


def src_batch(n_regions=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor([[0, 7, 8, 9, 2], [0, 10, 11, 2, 1]])
    return {"input_ids": ids, "position_ids": torch.tensor([[2, 3, 4, 5, 6], [2, 3, 4, 5, 1]]),
            "txt_mask": ids != 1, "side_ids": torch.zeros_like(ids), "pair_langs": [("en",), ("en",)],
            "img_feat": torch.rand(2, n_regions, 6, generator=g), "img_pos_feat": torch.rand(2, n_regions, 7, generator=g),
            "img_valid": torch.ones(2, n_regions, dtype=torch.bool)}


def test_nmt_ignores_images_bit_for_bit_and_mmt_does_not():
    nmt = build_from_xlm(tiny_xlm(), False, "en", "fr", SPECIAL).eval()
    mmt = build_from_xlm(tiny_xlm(), True, "en", "fr", SPECIAL).eval()
    a, b = src_batch(seed=0), src_batch(seed=1)
    assert torch.equal(nmt.encode(a).states, nmt.encode(b).states)
    assert not torch.allclose(mmt.encode(a).states, mmt.encode(b).states)
    assert mmt.encode(a).states.shape[1] == 3 + 5  # regions first, then text
    assert mmt.source_lengths(a).tolist() == [5, 4]


def test_loss_falls_when_fitting_two_sentences():
    model = build_from_xlm(tiny_xlm(), True, "en", "fr", SPECIAL)
    tgt = torch.tensor([[0, 20, 21, 22, 2], [0, 23, 24, 2, 1]])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss, n = model.loss(src_batch(), tgt)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert n == 7 and loss.item() < 0.2 * first


def test_degradation_masks_whole_words_with_one_mask():
    ids, word2ids = [5, 6, 7, 8, 9], [[0], [1, 2], [3], [4]]  # 'a' 'red'(2 pieces) 'dog' 'runs'
    masked = Degradation("words", frozenset({"red", "dog"})).masked(["a", "Red", "dog", "runs"])
    assert masked == [False, True, True, False]
    assert degrade_ids(ids, word2ids, masked, 99) == [5, 99, 99, 9]
    assert Degradation("progressive", keep_first=2).masked(["a", "b", "c"]) == [False, False, True]
    assert degrade_ids(ids, word2ids, [False] * 4, 99) == ids


def test_masked_word_accuracy_restrict_and_relaxed():
    lexicon = {"dog": ["Hund", "Hunde"], "red": ["rot", "roter", "rote"]}
    masked = [["dog", "red"], ["red"], ["cat"]]
    hyps = ["ein Hund", "ein rote Ball", "eine Katze"]
    refs = ["ein roter Hund", "ein roter Ball", "eine Katze"]
    acc = masked_word_accuracy(masked, hyps, refs, lexicon, "de")
    # counted: dog(1), red(1), red(2); cat has no entry. dog right; red(1) missed; red(2) only relaxed
    assert acc["n"] == 3 and acc["restrict"] == pytest.approx(100 / 3) and acc["relaxed"] == pytest.approx(200 / 3)


def test_probe_helpers():
    perms = permutations(10, 3, seed=0)
    assert len(perms) == 3 and all(sorted(p) == list(range(10)) for p in perms)
    assert all(all(p[i] != i for i in range(10)) for p in perms)
    assert image_awareness(30.0, [20.0, 22.0])["delta"] == pytest.approx(9.0)
    assert image_awareness(28.062112833303424, [28.062112833303424] * 3)["delta"] == 0.0  # fmean would give -4e-15
    table = seed_table({"MMT": {("en-de", "test2016"): [30.0, 32.0]}})
    assert "31.0 ± 1.4" in table and table.count("–") == 5


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A small demo corpus in Multi30K layout, converted by prepro.py multi30k (en-fr)."""
    import prepro
    from data.demo.mmt import translation_lexicon, write_multi30k_layout
    from scripts.make_demo_data import build_demo_corpus

    root = tmp_path_factory.mktemp("mmt_demo")
    build_demo_corpus(root / "data", n_train=120, n_val=16, n_test=16, progress=False)
    raw = write_multi30k_layout(root / "data" / "raw", root / "m30k", "fr")
    assert prepro.main(["multi30k", "--input", str(raw), "--src", "en", "--tgt", "fr", "--output", str(root / "txt"),
                        "--tokenizer", str(root / "data" / "tokenizer"), "--img_db",
                        str(root / "data" / "img_db" / "demo_imgs"), "--splits", "train", "val",
                        "test_2016_flickr", "--no_progress"]) == 0
    (root / "model.json").write_text(json.dumps({"architecture": "xlm", "dim": 32, "n_layers": 2, "n_heads": 4,
                                                  "ffn_dim": 64, "langs": ["en", "fr"], "max_positions": 64}))
    (root / "lex.json").write_text(json.dumps(translation_lexicon("fr")))
    return root


def _args(root, out, **kw):
    txt = root / "txt"
    args = {"output_dir": out, "tokenizer": root / "data" / "tokenizer", "model_config": root / "model.json",
            "train_db": txt / "multi30k_en-fr_train.db", "val_db": txt / "multi30k_en-fr_val.db",
            "test_dbs.test2016": txt / "multi30k_en-fr_test_2016_flickr.db",
            "img_db": root / "data" / "img_db" / "demo_imgs", "src_lang": "en", "tgt_lang": "fr", "init": "random",
            "min_bb": 3, "learning_rate": 2e-3, "num_train_steps": 12, "valid_steps": 4, "save_steps": 4,
            "train_batch_size": 1024, "val_batch_size": 4096, "n_workers": 0, "log_steps": 4, "beam_size": 2,
            "patience": 0, "seed": 3}
    args.update(kw)
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


class _Killed(Exception):
    pass


def _kill_at(step):
    def callback(trainer):
        if trainer.step == step:
            raise _Killed
    return callback


def test_train_mmt_en_fr_best_checkpoint_resume_and_inference(demo, tmp_path):
    import inf_mmt
    import train_mmt

    out = tmp_path / "run"
    metrics = train_mmt.main(_args(demo, out))
    assert "mmt/bleu" in metrics and (out / "ckpt" / "model_best.pt").is_file()
    # resume: a run stopped at step 8 and continued to 12 ends with the same weights as the straight run
    straight = torch.load(out / "ckpt" / "model_step_12.pt", weights_only=True)
    split = tmp_path / "split"
    with pytest.raises(_Killed):
        train_mmt.main(_args(demo, split), callbacks=[_kill_at(8)])
    train_mmt.main(_args(demo, split))
    resumed = torch.load(split / "ckpt" / "model_step_12.pt", weights_only=True)
    assert all(torch.allclose(straight[k], resumed[k], atol=1e-6) for k in straight)
    results = inf_mmt.main(["--run", str(out), "--shuffles", "2", "--lexicon", str(demo / "lex.json"), "--no_meteor",
                            "--degrade.mode", "words", "--degrade.words", '["red", "blue", "dog"]'])
    scores = results["test2016"]
    assert {"bleu_tok", "bleu_detok", "chrf", "incongruent", "masked_words"} <= set(scores)
    assert "tok:13a" in scores["bleu_detok"]["signature"]
    hyps = (out / "hyp.test2016.txt").read_text(encoding="utf-8").splitlines()
    assert len(hyps) == 16


def test_early_stopping_and_nmt_delta_zero(demo, tmp_path):
    import inf_mmt
    import train_mmt

    out = tmp_path / "nmt"
    train_mmt.main(_args(demo, out, use_images="false", learning_rate=0.0, num_train_steps=40, patience=2,
                         save_steps=40))
    log = (out / "log.txt").read_text()
    assert "early stop" in log and "step 12" in log and "step 16:" not in log  # 3 validations, then stop
    results = inf_mmt.main(["--run", str(out), "--shuffles", "2", "--no_meteor"])
    assert results["test2016"]["incongruent"]["delta"] == 0.0


@pytest.mark.parametrize("name", ["mmt_demo.json", "mmt_m30k_en-de.json", "mmt_m30k_en-fr.json",
                                  "mmt_m30k_en-de_scratch.json"])
def test_shipped_configs_parse(name, repo_root, monkeypatch):
    from utils.config import load_config
    from training.mmt_config import MmtConfig

    monkeypatch.setenv("UC2_DEMO_DIR", "/demo")
    cfg = load_config(MmtConfig, repo_root / "config" / name)
    assert cfg.src_lang == "en" and cfg.tgt_lang in ("de", "fr")
    if name.startswith("mmt_m30k") and "scratch" not in name:  # the seed's fine-tuning recipe
        assert (cfg.learning_rate, cfg.decay, cfg.dropout, cfg.beam_size, cfg.patience) == (1e-5, "constant", 0.2, 8, 21)
        assert set(cfg.test_dbs) == {"test2016", "test2017", "COCO"}
