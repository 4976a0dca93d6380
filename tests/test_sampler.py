"""Token-bucket sampler: budget, coverage across ranks, determinism and resume; collate packing."""
import hashlib
from itertools import islice

import numpy as np
import pytest
import torch

from data.collate import collate_backbone, img_mask_target, pack_indices, xlmr_position_ids
from data.sampler import OrderedBatchSampler, TokenBucketSampler


def _lens(n=300, seed=0):
    return np.random.default_rng(seed).integers(5, 90, size=n)


def test_token_budget_respected_and_sizes_grow_in_multiples():
    lens = _lens()
    sampler = TokenBucketSampler(lens, batch_tokens=400, bucket_size=64, size_multiple=4, seed=3)
    batches = sampler.rank_batches(0)
    for batch in batches:
        idx = [i for i, _ in batch]
        assert max(lens[idx]) * len(idx) <= 400
    # Most batches are whole multiples of 4 (only bucket tails and budget cuts are not).
    assert np.mean([len(b) % 4 == 0 for b in batches]) > 0.6


def test_single_long_example_still_gets_a_batch():
    sampler = TokenBucketSampler([500, 10, 10], batch_tokens=100, size_multiple=8, shuffle=False)
    batches = [[i for i, _ in b] for b in sampler.rank_batches(0)]
    assert sorted(i for b in batches for i in b) == [0, 1, 2]
    assert [0] in batches


@pytest.mark.parametrize("n", [300, 7])
def test_each_index_once_per_epoch_across_two_ranks(n):
    lens = _lens(n)
    ranks = [TokenBucketSampler(lens, 300, bucket_size=50, seed=1, rank=r, world_size=2) for r in range(2)]
    for epoch in (0, 1):
        shares = [r.rank_batches(epoch) for r in ranks]
        assert shares[0] and shares[1]  # per-rank plans: the counts may differ by a few bucket tails
        seen = [i for share in shares for batch in share for i, _ in batch]
        assert sorted(seen) == list(range(n))


def test_fewer_examples_than_ranks_still_gives_every_rank_batches():
    shares = [TokenBucketSampler([4, 5], 100, rank=r, world_size=3).rank_batches(0) for r in range(3)]
    assert all(shares) and sorted(i for s in shares[:2] for b in s for i, _ in b) == [0, 1]


def test_ranks_shard_before_bucketing_and_take_disjoint_shares():
    lens = _lens()
    r0 = TokenBucketSampler(lens, 300, seed=5, rank=0, world_size=2)
    r1 = TokenBucketSampler(lens, 300, seed=5, rank=1, world_size=2)
    seen = [{i for b in r.rank_batches(2) for i, _ in b} for r in (r0, r1)]
    assert not seen[0] & seen[1] and len(seen[0]) == len(seen[1]) == 150
    one = dict(p for b in TokenBucketSampler(lens, 300, seed=5).rank_batches(2) for p in b)
    assert all(one[i] == s for r in (r0, r1) for b in r.rank_batches(2) for i, s in b)  # same draw seeds


def test_one_rank_batches_unchanged_by_per_rank_planning():
    """Fingerprint of the first 400 batches (>1 epoch) of the former global planner, for one rank: the
    golden losses of one-process runs stay valid."""
    lens = np.random.default_rng(11).integers(1, 120, size=2000)
    sampler = TokenBucketSampler(lens, 600, bucket_size=256, size_multiple=8, seed=5)
    stream = repr(list(islice(sampler.batches(0), 400))).encode()
    assert len(sampler.rank_batches(0)) == 299
    assert hashlib.sha256(stream).hexdigest() == "b282af7b3be7d8a93499dbf4e633eb276aba1f12fa09e4de9749e09b97eb7e06"


def test_epochs_differ_and_draw_seeds_are_deterministic():
    lens = _lens()
    a = TokenBucketSampler(lens, 300, seed=5)
    b = TokenBucketSampler(lens, 300, seed=5)
    assert a.rank_batches(0) == b.rank_batches(0)
    assert a.rank_batches(0) != a.rank_batches(1)
    seeds0 = dict(pair for batch in a.rank_batches(0) for pair in batch)
    seeds1 = dict(pair for batch in a.rank_batches(1) for pair in batch)
    assert all(seeds0[i] != seeds1[i] for i in range(len(lens)))  # fresh masks every epoch
    assert dict(pair for batch in TokenBucketSampler(lens, 300, seed=6).rank_batches(0) for pair in batch) != seeds0


@pytest.mark.parametrize("start", [0, 3, 41, 100])
def test_start_batch_resume_equals_continued_stream(start):
    lens = _lens(120)
    sampler = TokenBucketSampler(lens, 250, bucket_size=40, seed=2, rank=1, world_size=2)
    full = list(islice(sampler.batches(0), start + 15))
    resumed = list(islice(TokenBucketSampler(lens, 250, bucket_size=40, seed=2, rank=1, world_size=2,
                                             start_batch=start), 15))
    assert resumed == full[start:]
    assert len(sampler.rank_batches(0)) < 41  # start 41 and 100 cross epoch boundaries


def test_ordered_sampler_covers_every_example_once_across_ranks_in_length_order():
    lens = _lens(53)
    shares = [list(OrderedBatchSampler(lens, 200, seed=1, rank=r, world_size=2)) for r in range(2)]
    seen = [i for share in shares for batch in share for i, _ in batch]
    assert sorted(seen) == list(range(53))
    flat = [lens[i] for batch in shares[0] for i, _ in batch]
    assert flat == sorted(flat, reverse=True)
    assert shares == [list(OrderedBatchSampler(lens, 200, seed=1, rank=r, world_size=2)) for r in range(2)]


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="rank 2 outside world size 2"):
        TokenBucketSampler([3], 10, rank=2, world_size=2)
    with pytest.raises(ValueError, match="lens is empty"):
        TokenBucketSampler([], 10)


# --- collate helpers on a hand-made case -----------------------------------------------------------

def test_positions_plain_and_paired_restart():
    assert xlmr_position_ids(4).tolist() == [2, 3, 4, 5]
    # <s> 49 708 330 </s> <s> 735 342 720 134 </s>: the original fixture's VTLM positions.
    assert xlmr_position_ids(11, restart_at=5).tolist() == [2, 3, 4, 5, 6, 2, 3, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="restart index"):
        xlmr_position_ids(3, restart_at=3)


def test_pack_indices_hand_made():
    attn, gather = pack_indices(txt_lens=[3, 5], num_bbs=[2, 1], max_txt_len=5)
    assert attn.tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    # example 0: text 0..2, then its regions at 5, 6 of cat([txt (5), img (2)]); example 1: text 0..4, region 5
    assert gather.tolist() == [[0, 1, 2, 5, 6, 0], [0, 1, 2, 3, 4, 5]]
    tgt = img_mask_target([torch.tensor([False, True]), torch.tensor([True])], [3, 5], 6)
    assert tgt.nonzero().tolist() == [[0, 4], [1, 5]]


def test_collate_backbone_pads_ids_positions_and_regions():
    def ex(n_txt, n_img, restart=None):
        return {"input_ids": torch.arange(10, 10 + n_txt), "position_ids": xlmr_position_ids(n_txt, restart),
                "img_feat": torch.ones(n_img, 4), "img_pos_feat": torch.ones(n_img, 7)}
    batch = collate_backbone([ex(3, 2), ex(6, 1, restart=3)])
    assert batch["input_ids"][0].tolist() == [10, 11, 12, 1, 1, 1]
    assert batch["position_ids"].tolist() == [[2, 3, 4, 1, 1, 1], [2, 3, 4, 2, 3, 4]]
    assert batch["img_feat"].shape == (2, 2, 4) and batch["img_feat"][1, 1].abs().sum() == 0
    assert batch["gather_index"].tolist() == [[0, 1, 2, 6, 7, 0, 0], [0, 1, 2, 3, 4, 5, 6]]
    assert batch["attn_masks"].sum(1).tolist() == [5, 7]
