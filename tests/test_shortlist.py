"""Fast retrieval (evaluation/shortlist.py): k-NN backends, the no-free-pass rule on hand-made score
matrices, folds, and k = N giving exactly the exhaustive scores and recalls on a tiny model."""
from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

from evaluation import itm_eval, shortlist as sl
from evaluation.itm_eval import ScoreSettings
from evaluation.retrieval_metrics import brute_force_recalls, coco_1k_folds, retrieval_recalls
from model.heads import itm_head, rank_head
from model.itc import itc_head
from model.model import UC2WithHeads
from tests.test_itm_eval import tiny_config, tiny_set
from training.itm_config import ShortlistOptions
from utils.errors import ConfigError


def itc_model(seed: int = 0) -> UC2WithHeads:
    torch.manual_seed(seed)
    model = UC2WithHeads(tiny_config(), {"itm_output": itm_head, "rank_output": rank_head, "itc": itc_head})
    with torch.no_grad():
        model.rank_output.weight.normal_(0, 1.0)  # distinct scores (see tests/test_itm_eval.tiny_model)
    return model.eval()


def full(n_txt: int, n_img: int) -> sl.Shortlist:
    ones = np.ones((n_txt, n_img), dtype=bool)
    return sl.Shortlist(ones, ones.copy(), n_img, n_txt)


# ------------------------------------------------------------------------------------------------ k-NN


def test_exact_knn_is_sorted_and_keeps_the_lower_index_on_ties():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    assert sl.knn(q, g, 3, chunk=1).tolist() == [[1, 0, 2], [3, 0, 2]]
    with pytest.raises(ValueError, match="k <= 4"):
        sl.knn(q, g, 5)


def test_faiss_backend_gives_the_exact_shortlist():
    # faiss-cpu is in requirements.txt: a missing faiss is a broken install, so this fails rather than skips
    import faiss  # noqa: F401
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(50, 16, generator=gen), dim=1)
    g = torch.nn.functional.normalize(torch.randn(300, 16, generator=gen), dim=1)
    exact, fast = sl.knn(q, g, 10, "exact", chunk=7), sl.knn(q, g, 10, "faiss")
    assert np.array_equal(exact, fast)


def test_faiss_backend_without_faiss_is_a_clear_error(monkeypatch):
    real = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("no faiss")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ConfigError, match="faiss-cpu"):
        sl.knn(torch.eye(2), torch.eye(2), 1, "faiss")


@pytest.mark.parametrize("key", ["k_img", "k_txt", "k_max", "chunk"])
def test_bad_shortlist_settings_name_the_key(key):
    with pytest.raises(ConfigError, match=f"shortlist.{key}"):
        ShortlistOptions(**{key: 0})
    with pytest.raises(ConfigError, match="shortlist.backend"):
        ShortlistOptions(backend="annoy")
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="shortlist.k_fraction"):
            ShortlistOptions(k_fraction=bad)
    with pytest.raises(ConfigError, match="shortlist.below_shortlist"):
        ShortlistOptions(below_shortlist="free")


# ------------------------------------------------------------------------------------- the default k


def test_default_k_follows_the_gallery_size():
    opts = ShortlistOptions()
    assert (opts.k_img, opts.k_txt, opts.k_fraction, opts.k_max) == (None, None, 0.04, 256)
    k = lambda n: sl.gallery_k(None, n, opts.k_fraction, opts.k_max)  # noqa: E731
    assert [k(n) for n in (1, 10, 25, 50, 200, 1_000, 5_000, 25_000)] == [1, 1, 1, 2, 8, 40, 200, 256]
    assert sl.gallery_k(16, 10, 0.04, 256) == 10 and sl.gallery_k(3, 50, 0.04, 256) == 3   # a set k: clipped only
    # below the cap, the pairs of both directions stay within 2 * k_fraction of all pairs (>= 12.5x fewer)
    for n_txt, n_img in ((200, 50), (1_000, 1_000), (5_000, 1_000), (1_000, 5_000)):
        assert n_txt * k(n_img) + n_img * k(n_txt) <= 2 * opts.k_fraction * n_txt * n_img


def test_default_k_on_a_demo_sized_gallery_scores_under_a_tenth_of_the_pairs():
    gen = torch.Generator().manual_seed(2)
    txt = torch.nn.functional.normalize(torch.randn(200, 8, generator=gen), dim=1)
    img = torch.nn.functional.normalize(torch.randn(50, 8, generator=gen), dim=1)
    short = sl.build_shortlist(txt, img, np.repeat(np.arange(50), 4), ShortlistOptions())
    assert (short.k_img, short.k_txt) == (2, 8)
    assert short.t2i.sum(axis=1).tolist() == [2] * 200 and short.i2t.sum(axis=0).tolist() == [8] * 50
    assert short.pairs.sum() <= 10_000 / 10


def test_default_k_in_folds_comes_from_the_smallest_fold():
    gen = torch.Generator().manual_seed(3)
    txt, img = torch.randn(500, 4, generator=gen), torch.randn(100, 4, generator=gen)
    folds = np.repeat(np.arange(2), 50)                                 # 2 folds of 50 images, 250 captions
    short = sl.build_shortlist(txt, img, np.repeat(np.arange(100), 5), ShortlistOptions(), folds)
    assert (short.k_img, short.k_txt) == (2, 10)


# ----------------------------------------------------------------------- hand-made score matrices

SCORES = np.array([[3.0, 1.0, 2.0],       # caption 0 (image 0)
                   [2.0, 2.0, 0.0],       # caption 1 (image 1): tie with image 0
                   [0.0, 5.0, 1.0],       # caption 2 (image 2)
                   [1.0, 0.0, 4.0]])      # caption 3 (image 2)
TXT2IMG = np.array([0, 1, 2, 2])


def test_full_shortlist_gives_the_exhaustive_recalls_ties_included():
    ds = type("D", (), {"txt2img": TXT2IMG})()
    got = sl.shortlist_metrics(SCORES, full(4, 3), ds)
    assert got == retrieval_recalls(SCORES, TXT2IMG) == brute_force_recalls(SCORES, TXT2IMG)
    assert got["txt_r1"] == 50.0  # caption 1 ties with a wrong image: counted against it


def test_positive_outside_the_shortlist_ranks_below_all_k():
    ds = type("D", (), {"txt2img": TXT2IMG})()
    t2i = np.zeros((4, 3), dtype=bool)
    t2i[:, 0] = True                      # every caption keeps image 0 only (k_img = 1)
    i2t = np.ones((4, 3), dtype=bool)
    got = sl.shortlist_metrics(SCORES, sl.Shortlist(t2i, i2t, 1, 4), ds)
    # caption 0's image is kept and scored 3 -> rank 0; every other positive is unscored -> rank n_img - 1 = 2
    assert got["txt_r1"] == 25.0 and got["txt_r5"] == 100.0  # K >= n_img: everything is found
    t_only = np.where(t2i, SCORES, sl.UNSCORED)
    assert got["txt_r1"] == retrieval_recalls(t_only, TXT2IMG)["txt_r1"]
    # a wrong image scoring below the (unscored) positive in the exhaustive matrix still ranks ahead of it
    assert SCORES[2, 0] < SCORES[2, 2] and got["txt_r1"] < retrieval_recalls(SCORES, TXT2IMG)["txt_r1"]
    # image->text reads the i2t shortlist (everything here): the exhaustive image->text recalls
    exhaustive = retrieval_recalls(SCORES, TXT2IMG)
    assert all(got[f"img_r{k}"] == exhaustive[f"img_r{k}"] for k in (1, 5, 10))


def test_with_dual_similarities_the_unshortlisted_follow_in_dual_order_below_all_k():
    ds = type("D", (), {"txt2img": TXT2IMG})()
    t2i = np.zeros((4, 3), dtype=bool)
    t2i[:, 0] = True                                     # k_img = 1: image 0 for every caption
    i2t = np.ones((4, 3), dtype=bool)
    dual = np.array([[0.0, 0.9, -0.5], [0.0, 0.8, 0.9], [0.0, 0.1, 0.5], [0.0, 0.7, 0.2]])
    short = sl.Shortlist(t2i, i2t, 1, 4)
    t2i_scores = sl.tiered(SCORES, t2i, dual, axis=1)
    for row in range(4):                                 # the kept image first, then the rest by dual order
        order = np.argsort(-t2i_scores[row], kind="stable")
        assert order[0] == 0 and list(order[1:]) == list(1 + np.argsort(-dual[row, 1:], kind="stable"))
    got = sl.shortlist_metrics(SCORES, short, ds, dual=dual)
    # caption 0: kept, rank 0; 1: image 1 second (dual 0.8 < 0.9) -> rank 2; 2: image 2 first of the rest
    # -> rank 1; 3: image 2 after image 1 -> rank 2.  R@1 = 1/4, R@5 = 4/4 (3 images).
    assert (got["txt_r1"], got["txt_r5"]) == (25.0, 100.0)
    ranks = [(t2i_scores[i] >= t2i_scores[i, TXT2IMG[i]]).sum() - 1 for i in range(4)]
    assert ranks == [0, 2, 1, 2]


def test_tied_below_the_shortlist_counts_a_missed_positive_at_no_k():
    # 7 captions, one per image; every caption keeps image 0 only (k_img = 1); the dual encoder puts each
    # caption's own image first among the other six.
    n = 7
    txt2img = np.arange(n)
    ds = type("D", (), {"txt2img": txt2img})()
    scores = np.zeros((n, n))
    t2i = np.zeros((n, n), dtype=bool)
    t2i[:, 0] = True
    dual = np.eye(n) * 0.9
    short = sl.Shortlist(t2i, np.ones((n, n), dtype=bool), 1, n)
    ordered = sl.shortlist_metrics(scores, short, ds, dual=dual)
    tied = sl.shortlist_metrics(scores, short, ds, dual=None)
    # caption 0 is kept (rank 0); captions 1-6 miss: rank 1 in dual order (found at R@5), or tied with
    # the five other unscored images at the bottom (rank 6, found at R@10 only: no better than chance)
    assert (ordered["txt_r1"], ordered["txt_r5"]) == pytest.approx((100 / 7, 100.0))
    assert (tied["txt_r1"], tied["txt_r5"], tied["txt_r10"]) == pytest.approx((100 / 7, 100 / 7, 100.0))


def test_below_shortlist_option_picks_the_tier_of_the_reranked_metrics():
    model, ds = itc_model(), tiny_set(n_img=8, caps_per_img=2)
    settings = ScoreSettings(head="rank", txt_block=4, img_block=3)
    results = {tail: sl.evaluate_shortlist(model, ds, settings, ShortlistOptions(k_img=1, k_txt=1,
                                                                                 below_shortlist=tail))
               for tail in ("dual_encoder", "tied")}
    (ordered, scores), (tied, _) = results["dual_encoder"], results["tied"]
    assert ordered.row()["below_shortlist"] == "dual_encoder" and tied.row()["below_shortlist"] == "tied"
    short = sl.build_shortlist(*sl.embed_set(model, ds), ds.txt2img, ShortlistOptions(k_img=1, k_txt=1))
    assert tied.rerank == sl.shortlist_metrics(scores, short, ds, dual=None)
    assert ordered.rerank["r_mean"] >= tied.rerank["r_mean"]   # ordering the tail can only lift a missed positive


def test_shortlist_recall_counts_kept_positives():
    t2i = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=bool)
    i2t = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 1]], dtype=bool)
    got = sl.shortlist_recall(sl.Shortlist(t2i, i2t, 1, 1), TXT2IMG)
    assert got == {"txt_recall_at_k": 50.0, "img_recall_at_k": pytest.approx(200 / 3)}


def test_folds_with_a_full_shortlist_equal_the_exhaustive_folds():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(20, 10)).astype(np.float32)   # many ties
    txt2img = np.repeat(np.arange(10), 2)
    ds = type("D", (), {"txt2img": txt2img})()
    folds = rng.permutation(np.repeat(np.arange(5), 2))
    got = sl.shortlist_metrics(scores, full(20, 10), ds, coco_folds=5, img_folds=folds)
    assert got == coco_1k_folds(scores, txt2img, 5, img_folds=folds)["mean"]


def test_shortlists_stay_inside_the_query_fold():
    gen = torch.Generator().manual_seed(1)
    txt, img = torch.randn(20, 4, generator=gen), torch.randn(10, 4, generator=gen)
    txt2img = np.repeat(np.arange(10), 2)
    folds = np.repeat(np.arange(5), 2)
    short = sl.build_shortlist(txt, img, txt2img, ShortlistOptions(k_img=8, k_txt=8), folds)
    assert (short.k_img, short.k_txt) == (2, 4)           # clipped to a fold's 2 images / 4 captions
    same_fold = folds[txt2img][:, None] == folds[None, :]
    assert short.t2i.sum() == 20 * 2 and short.i2t.sum() == 10 * 4
    assert not (short.t2i & ~same_fold).any() and not (short.i2t & ~same_fold).any()


# ------------------------------------------------------------------------------ on a tiny model


@pytest.mark.parametrize("blocks", [(3, 2), (8, 64)])
def test_all_pairs_needed_scores_bit_for_bit_as_exhaustive(blocks):
    model, ds = itc_model(), tiny_set(n_img=7, caps_per_img=2)
    settings = ScoreSettings(head="rank", txt_block=blocks[0], img_block=blocks[1])
    exhaustive = itm_eval.score_matrix(model, ds, settings)
    need = np.ones_like(exhaustive, dtype=bool)
    assert np.array_equal(sl.score_pairs(model, ds, need, settings), exhaustive)


def test_a_partial_shortlist_scores_its_pairs_as_exhaustive_and_nothing_else():
    model, ds = itc_model(), tiny_set(n_img=7, caps_per_img=2)
    settings = ScoreSettings(head="rank", txt_block=3, img_block=2)
    exhaustive = itm_eval.score_matrix(model, ds, settings)
    need = np.random.default_rng(0).random(exhaustive.shape) < 0.3
    got = sl.score_pairs(model, ds, need, settings)
    np.testing.assert_allclose(got[need], exhaustive[need], rtol=1e-5, atol=1e-5)
    assert (got[~need] == sl.UNSCORED).all()


@pytest.mark.parametrize("coco_folds", [0, 2])
def test_k_equal_to_n_gives_the_exhaustive_recall(coco_folds):
    model, ds = itc_model(), tiny_set(n_img=6, caps_per_img=2)
    settings = ScoreSettings(head="rank", txt_block=4, img_block=3)
    exhaustive = itm_eval.score_matrix(model, ds, settings)
    result, scores = sl.evaluate_shortlist(model, ds, settings, ShortlistOptions(k_img=100, k_txt=100),
                                           coco_folds=coco_folds, exhaustive=exhaustive)
    # with folds only the within-fold blocks are scored (the only ones the fold metrics read)
    folds = np.repeat(np.arange(max(coco_folds, 1)), 6 // max(coco_folds, 1))
    within = folds[ds.txt2img][:, None] == folds[None, :]
    assert np.array_equal(scores[within], exhaustive[within]) and (scores[~within] == sl.UNSCORED).all()
    assert result.rerank == result.exhaustive
    assert result.pairs_scored == int(within.sum()) and result.pairs_total == 12 * 6
    assert result.recall_at_k == {"txt_recall_at_k": 100.0, "img_recall_at_k": 100.0}


def test_small_k_scores_fewer_pairs_and_reports_the_dual_encoder():
    model, ds = itc_model(), tiny_set(n_img=6, caps_per_img=2)
    result, _ = sl.evaluate_shortlist(model, ds, ScoreSettings(head="rank", txt_block=4, img_block=3),
                                      ShortlistOptions(k_img=2, k_txt=2))
    assert result.pairs_scored <= 12 * 2 + 6 * 2 and result.exhaustive is None
    assert 0 <= result.dual["r_mean"] <= 100 and set(result.seconds) == {"embed", "knn", "rerank", "total"}
    assert result.row()["k_img"] == 2


def test_a_model_without_the_itc_head_is_refused_by_name():
    model = UC2WithHeads(tiny_config(), {"itm_output": itm_head, "rank_output": rank_head})
    with pytest.raises(ConfigError, match="no 'itc' head"):
        sl.evaluate_shortlist(model, tiny_set(), ScoreSettings(), ShortlistOptions())


# ------------------------------------------------------------------- through train_itm / inf_itm

from tests.test_train_itm import corpus, spec  # noqa: E402,F401  (module fixture and helper)


def test_fine_tune_with_itc_mixed_in_then_shortlist_evaluation(corpus, tmp_path):  # noqa: F811
    import json

    import inf_itm
    import train_itm

    out = tmp_path / "run"
    tests = f"[{spec(corpus, 'en_test', 'en_test')}, {spec(corpus, 'de_test', 'de_test')}]"
    train_itm.main([
        "--output_dir", str(out), "--model_config", str(corpus["model_config"]),
        "--checkpoint", str(corpus["checkpoint"]), "--n_workers", "0", "--pin_mem", "false",
        "--train_datasets", f"[{spec(corpus, 'en_train', 'en_train')}]", "--test_datasets", tests,
        "--num_train_steps", "30", "--warmup_steps", "3", "--learning_rate", "1e-3", "--dropout", "0.0",
        "--train_batch_size", "8", "--valid_steps", "0", "--save_steps", "0", "--log_steps", "10",
        "--eval.img_block", "4", "--tasks", '[{"task": "itc", "batch_size": 8, "dim": 8}]', "--mix_ratio", "[1.0]",
        "--shortlist.k_img", "100", "--shortlist.k_txt", "100"])
    log = (out / "log.txt").read_text()
    assert "loss/itc=" in log and "loss/itm_rank=" in log
    rows = json.loads((out / "results" / "shortlist.json").read_text())
    assert [r["lang"] for r in rows] == ["en", "de"]
    for row in rows:  # k >= N: the rerank is the exhaustive evaluation
        assert row["rerank_ar"] == row["exhaustive_ar"] and row["pairs_scored"] == row["pairs_total"]
    assert "Shortlist + rerank AR" in (out / "results" / "shortlist.md").read_text()

    checkpoint = out / "ckpt" / "model_step_30.pt"
    common = ["--model_config", str(corpus["model_config"]), "--checkpoint", str(checkpoint), "--test_datasets", tests]
    full = inf_itm.main(["--output_dir", str(tmp_path / "full"), *common])
    fast = inf_itm.main(["--output_dir", str(tmp_path / "fast"), *common, "--shortlist.enabled", "true",
                         "--shortlist.k_img", "3", "--shortlist.k_txt", "3", "--shortlist.compare_exhaustive", "false"])
    assert fast[0]["setting"].endswith("(shortlist + rerank)")
    rows = json.loads((tmp_path / "fast" / "shortlist.json").read_text())
    assert all(r["pairs_scored"] < r["pairs_total"] and r["exhaustive_ar"] is None for r in rows)
    assert len(fast) == len(full) == 2

    with pytest.raises(ConfigError, match="pretrain.pt has no 'itc' head"):
        inf_itm.main(["--output_dir", str(tmp_path / "no_itc"), "--model_config", str(corpus["model_config"]),
                      "--checkpoint", str(corpus["checkpoint"]), "--test_datasets", tests, "--shortlist.enabled", "true"])

    # scripts/shortlist_sweep.py on the same run: k = N (fraction 1) is exhaustive scoring exactly
    from scripts import shortlist_sweep
    sweep_json = tmp_path / "sweep.json"
    rows = shortlist_sweep.main(["--run_dir", str(out), "--split", "test", "--fractions", "1.0,0.25",
                                 "--k", "1/1", "--out", str(sweep_json)])
    assert [r["setting"] for r in rows] == ["k_fraction 1", "k_fraction 0.25", "k 1/1"]
    saved = json.loads(sweep_json.read_text())
    exhaustive = sum(s["exhaustive_ar"] for s in saved["sets"]) / len(saved["sets"])
    assert rows[0]["worst_change"] == 0.0 and rows[0]["pair_ratio"] == 1.0 and rows[0]["rerank_ar"] == exhaustive
    for s in saved["sets"]:
        one = s["settings"]["k 1/1"]
        assert (one["k_img"], one["k_txt"]) == (1, 1) and one["pairs_scored"] < one["pairs_total"]
    assert rows[2]["pair_ratio"] > rows[1]["pair_ratio"] > 1.0
    with pytest.raises(ConfigError, match="'val_datasets' is empty"):
        shortlist_sweep.main(["--run_dir", str(out), "--split", "val"])
