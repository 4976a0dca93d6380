"""Retrieval metrics: hand-worked matrices, ties, the UNITER >100 % bug, brute-force agreement, folds."""
import numpy as np
import pytest
import torch

from evaluation.retrieval_metrics import (brute_force_recalls, coco_1k_folds, meta_average,
                                     retrieval_recalls)

KS3 = (1, 2, 3)


def _metrics(d):
    return {k: v for k, v in d.items() if not k.startswith("n_")}


def test_two_captions_per_image_by_hand():
    # rows = captions, cols = images; captions 0,1 -> image 0, captions 2,3 -> image 1
    scores = np.array([[0.9, 0.1],    # cap0: own img0 best            -> txt rank 0
                       [0.2, 0.8],    # cap1: img1 beats own img0      -> txt rank 1
                       [0.3, 0.7],    # cap2: own img1 best            -> txt rank 0
                       [0.6, 0.4]])   # cap3: img0 beats own img1      -> txt rank 1
    # img0 column [.9 .2 .3 .6]: best own caption cap0 (.9), no wrong caption above -> rank 0
    # img1 column [.1 .8 .7 .4]: best own caption cap2 (.7), wrong cap1 (.8) above  -> rank 1
    r = retrieval_recalls(scores, np.array([0, 0, 1, 1]), ks=(1, 2))
    assert r == {"img_r1": 50.0, "img_r2": 100.0, "txt_r1": 50.0, "txt_r2": 100.0,
                 "r_mean": 75.0, "n_txt": 4.0, "n_img": 2.0}


def test_perfect_and_reversed_rankings_one_caption_per_image():
    eye = np.eye(3)
    perfect = retrieval_recalls(eye, np.arange(3), ks=KS3)
    assert _metrics(perfect) == {k: 100.0 for k in _metrics(perfect)}
    # Own image scored lowest: both directions rank the true item last (rank 2 of 3).
    reversed_ = retrieval_recalls(1 - eye, np.arange(3), ks=KS3)
    assert [reversed_[f"{s}_r{k}"] for s in ("img", "txt") for k in KS3] == [0, 0, 100, 0, 0, 100]
    assert reversed_["r_mean"] == pytest.approx(100 / 3)


def test_permuted_images_follow_txt2img():
    # Caption i belongs to image perm[i]; scores peak exactly there, so everything is found at 1.
    perm = np.array([2, 0, 1])
    scores = np.eye(3)[perm]
    assert retrieval_recalls(scores, perm)["r_mean"] == 100.0


def test_constant_scores_are_pessimistic():
    # Every item ties with the true one; ties go against it, so the true item is last (rank 2 of 3).
    r = retrieval_recalls(np.ones((3, 3)), np.arange(3), ks=KS3)
    assert (r["img_r1"], r["img_r2"], r["img_r3"]) == (0.0, 0.0, 100.0)
    assert (r["txt_r1"], r["txt_r2"], r["txt_r3"]) == (0.0, 0.0, 100.0)


def test_ties_among_own_captions_do_not_hurt_but_wrong_ties_do():
    # img0 owns caps 0,1 tied at 0.5 -> no wrong caption >= 0.5 -> rank 0.
    # img1 owns caps 2,3 (best 0.5); wrong cap0 ties at 0.5 -> rank 1.
    scores = np.array([[0.5, 0.5],
                       [0.5, 0.1],
                       [0.2, 0.5],
                       [0.2, 0.0]])
    r = retrieval_recalls(scores, np.array([0, 0, 1, 1]), ks=(1, 2))
    assert (r["img_r1"], r["img_r2"]) == (50.0, 100.0)
    # text->image: cap0 ties own img0 with img1 -> rank 1; cap1 rank 0; cap2 rank 0; cap3 rank 1.
    assert (r["txt_r1"], r["txt_r2"]) == (50.0, 100.0)


def _uniter_buggy_txt2img_recall(scores, txt2img, k):
    """The original UNITER/UC2 text->image recall: counts BOTH columns of a 2-column nonzero()."""
    s = torch.as_tensor(scores)
    _, topk = s.topk(min(10, s.shape[1]), dim=1)
    gt = torch.as_tensor(txt2img).unsqueeze(1).expand_as(topk)
    rank = (topk == gt).nonzero()                 # (n_found, 2): [row, position]
    return (rank < k).sum().item() / len(txt2img)


def test_original_nonzero_bug_exceeds_100_percent_but_ours_does_not():
    scores = np.eye(2)                            # perfect ranking, 2 captions
    buggy = _uniter_buggy_txt2img_recall(scores, np.arange(2), k=1)
    # nonzero() = [[0, 0], [1, 0]]; entries < 1: row 0, pos 0, pos 0 -> 3 / 2 captions = 150 %
    assert buggy == pytest.approx(1.5)
    ours = retrieval_recalls(scores, np.arange(2))
    assert ours["txt_r1"] == 100.0
    assert all(v <= 100.0 for k, v in _metrics(ours).items())


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_on_random_matrices_with_ties(seed):
    rng = np.random.default_rng(seed)
    n_img = int(rng.integers(1, 9))
    caps = rng.integers(1, 4, size=n_img)         # 1..3 captions per image
    txt2img = rng.permutation(np.repeat(np.arange(n_img), caps))
    # Rounding to one decimal creates many ties, including with the true pairs.
    scores = np.round(rng.random((len(txt2img), n_img)), 1)
    ks = (1, 2, 5)
    fast = retrieval_recalls(scores, txt2img, ks)
    assert fast == pytest.approx(brute_force_recalls(scores, txt2img, ks))
    # torch and float16 inputs go through the same path and give the same answer
    assert retrieval_recalls(torch.tensor(scores, dtype=torch.float16), torch.tensor(txt2img), ks) == \
        pytest.approx(retrieval_recalls(scores.astype(np.float16), txt2img, ks))


def test_brute_force_itself_on_the_hand_case():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    r = brute_force_recalls(scores, np.array([0, 0, 1, 1]), ks=(1, 2))
    assert (r["img_r1"], r["txt_r1"], r["r_mean"]) == (50.0, 50.0, 75.0)


def test_coco_folds_use_only_diagonal_blocks_and_average():
    # 4 images, 1 caption each, 2 folds of 2 images.
    # Fold 0 block (caps 0,1 x imgs 0,1) is perfect; fold 1 block (caps 2,3 x imgs 2,3) is reversed.
    # Off-diagonal blocks hold huge scores: if they were read, every recall@1 would be 0.
    scores = np.full((4, 4), 9.0)
    scores[:2, :2] = np.eye(2)
    scores[2:, 2:] = 1 - np.eye(2)
    out = coco_1k_folds(scores, np.arange(4), n_folds=2, ks=(1, 2))
    f0, f1 = out["folds"]
    assert f0["r_mean"] == 100.0
    assert (f1["img_r1"], f1["img_r2"], f1["txt_r1"], f1["txt_r2"]) == (0.0, 100.0, 0.0, 100.0)
    assert out["mean"]["img_r1"] == 50.0 and out["mean"]["r_mean"] == 75.0
    assert (out["mean"]["n_folds"], out["mean"]["n_txt"], out["mean"]["n_img"]) == (2.0, 4.0, 4.0)


def test_coco_folds_captions_follow_their_image():
    # 2 captions per image, captions listed out of order; fold 1 holds images 2,3 and captions 0,5,2,7.
    txt2img = np.array([2, 0, 3, 1, 0, 2, 1, 3])
    scores = np.eye(4)[txt2img]                   # perfect everywhere
    out = coco_1k_folds(scores, txt2img, n_folds=2)
    assert [f["n_txt"] for f in out["folds"]] == [4.0, 4.0]
    assert out["mean"]["r_mean"] == 100.0


def test_coco_folds_with_explicit_fold_ids_match_reordered_columns():
    rng = np.random.default_rng(7)
    txt2img = np.repeat(np.arange(6), 2)
    scores = np.round(rng.random((12, 6)), 1)
    img_folds = np.array([1, 0, 2, 0, 1, 2])             # interleaved folds
    # Moving each fold's images next to each other must give the same per-fold numbers.
    order = np.argsort(img_folds, kind="stable")          # new column c holds old image order[c]
    new_index = np.argsort(order)
    same = coco_1k_folds(scores[:, order], new_index[txt2img], n_folds=3)
    out = coco_1k_folds(scores, txt2img, n_folds=3, img_folds=img_folds)
    assert out["folds"] == same["folds"] and out["mean"] == same["mean"]
    with pytest.raises(ValueError, match=r"unused folds \[2\]"):
        coco_1k_folds(scores, txt2img, n_folds=3, img_folds=np.array([0, 0, 1, 1, 0, 1]))


def test_coco_folds_rejects_uneven_split():
    with pytest.raises(ValueError, match="5 images cannot be split into 2"):
        coco_1k_folds(np.eye(5), np.arange(5), n_folds=2)


def test_meta_average_by_hand_and_paper_rows():
    assert meta_average({("multi30k", "en"): 80.0, ("multi30k", "de"): 70.0,
                         ("mscoco", "en"): {"r_mean": 90.0}}) == pytest.approx(80.0)
    # UC2 paper table 1, all-language fine-tune: 7 cells -> Meta-Ave 86.2
    paper = dict(zip([("m", "en"), ("m", "de"), ("m", "fr"), ("m", "cs"), ("c", "en"), ("c", "zh"),
                      ("c", "ja")], [88.2, 84.5, 83.9, 81.2, 88.1, 89.8, 87.5]))
    assert round(meta_average(paper), 1) == 86.2
    with pytest.raises(ValueError, match="at least one"):
        meta_average({})
    with pytest.raises(ValueError, match="no 'r_mean'"):
        meta_average({("m", "en"): {"img_r1": 1.0}})


@pytest.mark.parametrize("scores, txt2img, message", [
    (np.array([[1.0, np.nan]]), np.array([0]), "finite values"),
    (np.eye(2), np.array([0, 2]), "caption 1 points to image 2"),
    (np.eye(2), np.array([0]), "expected 2 integer image indices"),
    (np.eye(2)[[0, 0]], np.array([0, 0]), r"images \[1\] have no caption"),
    (np.zeros(3), np.array([0]), "2-D"),
])
def test_bad_input_gets_a_clear_error(scores, txt2img, message):
    with pytest.raises(ValueError, match=message):
        retrieval_recalls(scores, txt2img)
