"""Retrieval fine-tuning task (tasks/retrieval.py) on in-memory stand-in databases."""
from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch

from utils.errors import DataError
from tasks import retrieval
from tasks.retrieval import PairSource, RankDataset, RankSettings, RetrievalTask, hinge_rank_loss
from model.config import UC2ModelConfig
from model.model import UC2ForImageTextRetrieval
from evaluation import itm_eval

IMG_DIM = 8


class FakeTxtDb:
    """The TxtDb surface the task reads: ids, lens, txt2img, meta, [id] -> input_ids/img_fname."""

    def __init__(self, n_img: int, caps_per_img: int, seed: int = 0, prefix: str = "c"):
        rng = np.random.default_rng(seed)
        self.db_dir = f"/fake/{prefix}.db"
        self.meta = {"CLS": 0, "SEP": 2, "MASK": 39}
        self.ids = [f"{prefix}{j}_{c}" for j in range(n_img) for c in range(caps_per_img)]
        self.txt2img = {i: f"img{i[len(prefix):].split('_')[0]}.npz" for i in self.ids}
        # Each image gets a "topic" token so captions are learnable from their image.
        self._tok = {i: np.concatenate([[5 + int(i[len(prefix):].split('_')[0]) % 30],
                                        rng.integers(5, 39, size=rng.integers(1, 4))]) for i in self.ids}
        self.lens = [len(self._tok[i]) for i in self.ids]

    def __getitem__(self, key: str) -> dict:
        return {"input_ids": self._tok[key], "img_fname": self.txt2img[key]}


class FakeImgDb:
    """The ImgDb surface: name2nbb and get(fname) -> {features, norm_bb}."""

    def __init__(self, n_img: int, seed: int = 0):
        rng = np.random.default_rng(seed + 100)
        self.img_dir = "/fake/imgs"
        self._data = {f"img{j}.npz": {"features": rng.normal(size=(n, IMG_DIM)).astype(np.float32),
                                      "norm_bb": rng.uniform(size=(n, 6)).astype(np.float32)}
                      for j, n in enumerate(rng.integers(2, 5, size=n_img))}
        self.name2nbb = {k: len(v["features"]) for k, v in self._data.items()}

    def get(self, fname: str) -> dict:
        return self._data[fname]


def tiny_model(seed: int = 0) -> UC2ForImageTextRetrieval:
    torch.manual_seed(seed)
    return UC2ForImageTextRetrieval(UC2ModelConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=40, img_dim=IMG_DIM, img_label_dim=5, initializer_range=0.3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def make_task(settings: RankSettings, n_img: int = 6, caps: int = 3, batch_size: int = 4, **kw) -> RetrievalTask:
    source = PairSource([(FakeTxtDb(n_img, caps), FakeImgDb(n_img))])
    return RetrievalTask("itm_rank_test", source, settings, batch_size=batch_size, seed=7, **kw)


def test_negative_captions_never_come_from_the_same_image_and_are_deterministic():
    src = PairSource([(FakeTxtDb(4, 5), FakeImgDb(4))])
    for cap in range(len(src.ids[0])):
        negs = src.negative_captions(0, cap, 50, np.random.default_rng(cap))
        assert len(negs) == 50
        assert (src.cap_img[0][negs] != src.cap_img[0][cap]).all()
    a = src.negative_captions(0, 3, 10, np.random.default_rng(11))
    b = src.negative_captions(0, 3, 10, np.random.default_rng(11))
    c = src.negative_captions(0, 3, 10, np.random.default_rng(12))
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()


def test_negative_images_exclude_the_own_image_and_are_distinct_when_possible():
    src = PairSource([(FakeTxtDb(5, 2), FakeImgDb(5))])
    for cap in range(10):
        negs = src.negative_images(0, cap, 4, np.random.default_rng(cap))
        own = src.cap_img[0][cap]
        assert sorted(negs.tolist()) == sorted(set(range(5)) - {own})
    many = src.negative_images(0, 0, 9, np.random.default_rng(0))  # more than the 4 others: repeats
    assert len(many) == 9 and (many != src.cap_img[0][0]).all()


def test_group_layout_positive_then_negative_images_then_negative_captions():
    src = PairSource([(FakeTxtDb(4, 2), FakeImgDb(4))])
    group = RankDataset(src)[(2, 123, 2)]  # caption 2 = image 1's first caption
    assert len(group) == 5
    own_txt, own_img = src.caption(0, 2), src.image(0, 1)["img_feat"]
    assert torch.equal(group[0]["input_ids"], own_txt) and torch.equal(group[0]["img_feat"], own_img)
    for ex in group[1:3]:  # same caption, other images
        assert torch.equal(ex["input_ids"], own_txt) and not torch.equal(ex["img_feat"], own_img)
    for ex in group[3:]:   # other captions, same image
        assert torch.equal(ex["img_feat"], own_img)
    assert group[0]["input_ids"][0] == 0 and group[0]["input_ids"][-1] == 2
    again = RankDataset(src)[(2, 123, 2)]
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(group, again))


def test_hinge_loss_on_hand_made_scores():
    pos = torch.tensor([0.9, 0.5])
    neg = torch.tensor([[0.8, 0.1], [0.6, 0.2]])
    # margins: 0.2+0.8-0.9=0.1, 0.2+0.1-0.9<0, 0.2+0.6-0.5=0.3, 0.2+0.2-0.5<0 -> mean 0.1
    assert hinge_rank_loss(pos, neg, 0.2).item() == pytest.approx(0.1)
    assert hinge_rank_loss(pos, neg, 0.0).item() == pytest.approx(0.025)  # only 0.6 - 0.5


def test_parts_share_one_index_so_each_is_drawn_in_proportion_to_its_size():
    src = PairSource([(FakeTxtDb(6, 5, prefix="en"), FakeImgDb(6)), (FakeTxtDb(2, 5, prefix="de"), FakeImgDb(2))])
    assert len(src) == 40 and src.locate(29) == (0, 29) and src.locate(30) == (1, 0)
    task = RetrievalTask("t", src, RankSettings(), batch_size=5, seed=0)
    parts = [src.locate(i)[0] for b in islice(task.sampler.batches(0), 16) for i, _ in b]  # two epochs
    assert parts.count(0) == 3 * parts.count(1)


def test_train_batches_resume_where_they_stopped():
    task = make_task(RankSettings(negative_size=1))
    full = list(islice(task.train_batches(0), 5))
    resumed = next(task.train_batches(3))
    for key in retrieval.BACKBONE_KEYS:
        assert torch.equal(full[3][key], resumed[key])
    assert full[0]["input_ids"].shape[0] == 4 * 3  # 4 positives x (1 + 2k)


def test_hard_negatives_are_the_highest_scored_of_their_pool():
    task = make_task(RankSettings(negative_size=2, hard_neg_every=1, hard_neg_pool=5), n_img=8)
    model = tiny_model()
    pool = next(task.train_batches(0))
    assert pool["n_neg"] == 5 and pool["input_ids"].shape[0] == 4 * 11
    mined, logs = retrieval.mine_hard_negatives(model, pool, 2)
    assert logs["hard_neg_score"] > logs["pool_neg_score"]
    model.eval()
    with torch.no_grad():
        pool_s = torch.sigmoid(retrieval.rank_logits(model, pool)).view(4, 11)
        mined_s = torch.sigmoid(retrieval.rank_logits(model, mined)).view(4, 5)
    torch.testing.assert_close(mined_s[:, 0], pool_s[:, 0])                    # positives kept
    torch.testing.assert_close(mined_s[:, 1:3].sort(1).values, pool_s[:, 1:6].topk(2).values.sort(1).values)
    torch.testing.assert_close(mined_s[:, 3:].sort(1).values, pool_s[:, 6:].topk(2).values.sort(1).values)


def test_hard_negative_batches_alternate_and_train():
    task = make_task(RankSettings(negative_size=1, hard_neg_every=2, hard_neg_pool=4))
    batches = list(islice(task.train_batches(0), 3))
    assert [b["n_neg"] for b in batches] == [4, 1, 4]
    model = tiny_model()
    loss, logs = task.compute_loss(model, batches[0])
    loss.backward()
    assert "hard_neg_score" in logs and model.rank_output.weight.grad.abs().sum() > 0


def test_loss_falls_when_fine_tuning_a_tiny_model():
    task = make_task(RankSettings(negative_size=1, margin=0.2), n_img=6, caps=2, batch_size=6)
    model = tiny_model(1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    losses = []
    for batch in islice(task.train_batches(0), 80):
        loss, _ = task.compute_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])


def test_validate_reports_recall_of_each_set_and_their_mean():
    val = [itm_eval.load_retrieval_set(name, FakeTxtDb(4, 2, prefix=name), FakeImgDb(4)) for name in ("a", "b")]
    task = make_task(RankSettings(), val_sets=val, score_settings=itm_eval.ScoreSettings(txt_block=4, img_block=4))
    metrics = task.validate(tiny_model())
    assert {"a/r_mean", "b/txt_r1", "r_mean"} <= metrics.keys()
    assert metrics["r_mean"] == pytest.approx((metrics["a/r_mean"] + metrics["b/r_mean"]) / 2)
    assert metrics["a/n_txt"] == 8 and metrics["a/n_img"] == 4


def test_bad_parts_are_refused_with_the_file_named():
    with pytest.raises(DataError, match="at least two images"):
        PairSource([(FakeTxtDb(1, 3), FakeImgDb(1))])
    with pytest.raises(DataError, match=r"/fake/c.db: image 'img3.npz' is not in image db /fake/imgs"):
        PairSource([(FakeTxtDb(4, 1), FakeImgDb(3))])
    with pytest.raises(ValueError, match="hard_neg_pool"):
        RankSettings(negative_size=3, hard_neg_every=1, hard_neg_pool=2)
