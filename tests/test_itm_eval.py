"""The retrieval scoring engine (evaluation/itm_eval.py) against a naive per-pair loop, across ranks, on disk."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data.collate import collate_backbone, pack_indices, xlmr_position_ids
from utils.errors import DataError
from model.config import UC2ModelConfig
from model.model import UC2ForImageTextRetrieval, UC2ForPretraining
from evaluation import itm_eval
from evaluation.itm_eval import RetrievalSet, ScoreSettings

IMG_DIM = 8


def tiny_config() -> UC2ModelConfig:
    return UC2ModelConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=40, img_dim=IMG_DIM,
                          img_label_dim=5, initializer_range=0.3)


def tiny_model(cls=UC2ForImageTextRetrieval, seed: int = 0):
    torch.manual_seed(seed)
    model = cls(tiny_config())
    # BERT init gives near-identical scores for every pair; widen the heads so rankings are distinct.
    with torch.no_grad():
        for name in ("rank_output", "itm_output"):
            if hasattr(model, name):
                getattr(model, name).weight.normal_(0, 1.0)
    return model


def tiny_set(n_img: int = 5, caps_per_img: int = 2, seed: int = 0) -> RetrievalSet:
    """Random captions (lengths 2..7) and images (2..6 boxes, width IMG_DIM), two captions per image."""
    rng = np.random.default_rng(seed)
    images = {f"img{j}.npz": (rng.normal(size=(n, IMG_DIM)).astype(np.float32),
                              rng.uniform(size=(n, 7)).astype(np.float32))
              for j, n in enumerate(rng.integers(2, 7, size=n_img))}
    fnames = sorted(images)
    txt2img = np.repeat(np.arange(n_img), caps_per_img)
    tokens = [rng.integers(5, 40, size=rng.integers(2, 8)) for _ in txt2img]
    return RetrievalSet(name="tiny", txt_ids=[f"c{i}" for i in range(len(tokens))], txt_tokens=tokens,
                        img_fnames=fnames, txt2img=txt2img,
                        img_nbb=np.array([len(images[f][0]) for f in fnames]),
                        load_image=lambda f: images[f])


@torch.no_grad()
def naive_scores(model, ds: RetrievalSet, head: str) -> np.ndarray:
    """One backbone call per (caption, image) pair, built with the shared collate."""
    model.eval()
    out = np.zeros((len(ds.txt_ids), len(ds.img_fnames)), dtype=np.float32)
    for i, tok in enumerate(ds.txt_tokens):
        ids = torch.as_tensor(np.concatenate([[0], tok, [2]]))
        for j, fname in enumerate(ds.img_fnames):
            feat, pos = ds.load_image(fname)
            batch = collate_backbone([{"input_ids": ids, "position_ids": xlmr_position_ids(len(ids)),
                                       "img_feat": torch.from_numpy(feat),
                                       "img_pos_feat": torch.from_numpy(pos)}])
            seq = model.roberta(batch["input_ids"], batch["position_ids"], batch["img_feat"],
                                batch["img_pos_feat"], batch["attn_masks"], batch["gather_index"])
            out[i, j] = itm_eval.head_scores(model, model.roberta.pooler(seq), head).item()
    return out


@pytest.mark.parametrize("use_split", [True, False])
def test_score_matrix_equals_naive_loop(use_split):
    model, ds = tiny_model(), tiny_set()
    settings = ScoreSettings(head="rank", txt_block=3, img_block=2, use_split=use_split)
    got = itm_eval.score_matrix(model, ds, settings)
    want = naive_scores(model, ds, "rank")
    assert got.shape == (10, 5)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert np.ptp(want) > 0.1  # the comparison is not between constant matrices


def test_zero_shot_itm_head_is_match_log_odds():
    model, ds = tiny_model(UC2ForPretraining), tiny_set(n_img=3)
    got = itm_eval.score_matrix(model, ds, ScoreSettings(head="itm", txt_block=4, img_block=2))
    np.testing.assert_allclose(got, naive_scores(model, ds, "itm"), atol=1e-5, rtol=1e-5)


def test_score_matrix_restores_training_mode():
    model, ds = tiny_model(), tiny_set(n_img=2)
    model.train()
    itm_eval.score_matrix(model, ds, ScoreSettings(txt_block=2, img_block=2))
    assert model.training


def test_pack_pairs_matches_collate_layout():
    txt_lens, nbbs = torch.tensor([4, 2, 5]), torch.tensor([3, 1])
    attn, gather = itm_eval.pack_pairs(txt_lens, nbbs, txt_width=5)
    pairs = [(t, n) for t in txt_lens.tolist() for n in nbbs.tolist()]
    want_attn, want_gather = pack_indices([t for t, _ in pairs], [n for _, n in pairs], max_txt_len=5)
    assert torch.equal(attn, want_attn) and torch.equal(gather, want_gather)


def test_caption_blocks_partition_the_captions_across_ranks():
    lens = [5, 3, 3, 9, 1, 4, 7]
    one = np.concatenate(itm_eval.caption_blocks(lens, 2))
    assert one.tolist() == [4, 1, 2, 5, 0, 6, 3]  # sorted by length, ties by index
    split = [itm_eval.caption_blocks(lens, 2, r, 3) for r in range(3)]
    got = sorted(np.concatenate([b for blocks in split for b in blocks]).tolist())
    assert got == list(range(7))
    assert [b.tolist() for b in split[1]] == [[2, 5]]


def test_saved_scores_round_trip_without_pickle(tmp_path):
    ds = tiny_set(n_img=3)
    scores = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    path = itm_eval.save_scores(tmp_path / "s" / "scores_tiny.npz", scores, ds)
    back = itm_eval.load_scores(path)
    np.testing.assert_array_equal(back["scores"], scores)
    assert back["txt_ids"].tolist() == ds.txt_ids and back["img_fnames"].tolist() == ds.img_fnames
    np.testing.assert_array_equal(back["txt2img"], ds.txt2img)
    assert [p.name for p in path.parent.iterdir()] == ["scores_tiny.npz"]  # no temp file left


def test_load_scores_rejects_a_file_without_the_arrays(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, scores=np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"bad\.npz.*expected arrays"):
        itm_eval.load_scores(path)


def test_load_retrieval_set_names_a_missing_image():
    class Txt:
        ids, txt2img, db_dir = ["0", "1"], {"0": "a.npz", "1": "b.npz"}, "/x/cap.db"

        def __getitem__(self, key):
            return {"input_ids": [5, 6]}

    class Img:
        name2nbb, img_dir = {"a.npz": 3}, "/x/imgs"

    with pytest.raises(DataError, match=r"/x/imgs: image 'b.npz'.*/x/cap.db"):
        itm_eval.load_retrieval_set("t", Txt(), Img())


def _rank_worker(rank: int, world: int, init_file: str, state_path: str, out_path: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world)
    try:
        model = tiny_model()
        model.load_state_dict(torch.load(state_path, weights_only=True))
        scores = itm_eval.score_matrix(model, tiny_set(n_img=6), ScoreSettings(txt_block=2, img_block=4))
        np.save(f"{out_path}.{rank}.npy", scores)
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_give_the_single_process_matrix(tmp_path):
    model = tiny_model(seed=3)
    state_path = str(tmp_path / "model.pt")
    torch.save(model.state_dict(), state_path)
    single = itm_eval.score_matrix(model, tiny_set(n_img=6), ScoreSettings(txt_block=2, img_block=4))
    out = str(tmp_path / "scores")
    torch.multiprocessing.spawn(_rank_worker, args=(2, str(tmp_path / "init"), state_path, out), nprocs=2)
    for rank in range(2):
        np.testing.assert_array_equal(np.load(f"{out}.{rank}.npy"), single)


def test_encoder_flops_per_pair_by_hand():
    cfg = tiny_config()  # H 16, I 32, 2 layers
    # L = 5: per layer 5 * (8*256 + 4*16*32 + 4*5*16) = 5 * (2048 + 2048 + 320) = 22080; two layers.
    assert itm_eval.encoder_flops_per_pair(cfg, 3, 2) == 2 * 22080


def test_measure_scoring_on_a_synthetic_set():
    model = tiny_model()
    ds = itm_eval.synthetic_set(n_txt=6, n_img=4, txt_len=5, n_regions=3, img_dim=IMG_DIM, vocab_size=40)
    assert all(len(t) == 3 for t in ds.txt_tokens) and ds.load_image(ds.img_fnames[0])[0].shape == (3, IMG_DIM)
    stats = itm_eval.measure_scoring(model, ds, ScoreSettings(txt_block=3, img_block=4))
    assert stats["pairs_per_s"] > 0 and stats["tflops"] == pytest.approx(
        24 * itm_eval.encoder_flops_per_pair(model.config, 5, 3) / stats["seconds"] / 1e12)


def test_fold_file_sets_the_coco_folds(tmp_path):
    ds = tiny_set(n_img=4, caps_per_img=1)
    # Captions rank their own image first except caption 1, whose image is beaten by image 2 only.
    scores = np.eye(4, dtype=np.float32)
    scores[1, 2] = 2.0
    path = tmp_path / "folds.json"
    path.write_text(json.dumps({f: int(j in (1, 2)) for j, f in enumerate(ds.img_fnames)}))
    folds = itm_eval.read_fold_file(path, ds)
    assert folds.tolist() == [0, 1, 1, 0]
    by_file = itm_eval.set_metrics(scores, ds, coco_folds=2, img_folds=folds)
    by_block = itm_eval.set_metrics(scores, ds, coco_folds=2)       # folds {0, 1} and {2, 3}
    assert by_file["txt_r1"] == 75.0 and by_block["txt_r1"] == 100.0
    path.write_text(json.dumps({ds.img_fnames[0]: 0}))
    with pytest.raises(DataError, match=r"folds\.json: no integer fold id for image 'img1.npz'"):
        itm_eval.read_fold_file(path, ds)
