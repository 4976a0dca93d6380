"""Token-bucket batch samplers: deterministic, rank-aware and resumable.

A batch is a list of ``(dataset_index, draw_seed)`` pairs. ``draw_seed`` is an int derived from
``(seed, epoch, dataset_index)``; datasets build ``numpy.random.default_rng(draw_seed)`` from it, so all
masking and negative drawing is reproducible without any global or worker RNG (docs/ARCHITECTURE.md,
"Determinism and resume").

Batches group examples of similar length so that ``max_len * batch_size <= batch_tokens``. Every rank
computes the same global batch list for an epoch and takes every ``world_size``-th batch, so ranks agree
without communication, and resuming is "skip ``start_batch`` batches", computed epoch by epoch without
building any example.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

Batch = list[tuple[int, int]]

# Mixed into the draw-seed generator so it never coincides with the shuffling generator of the same epoch.
_DRAW_STREAM = 0x5EED
_SHUFFLE_STREAM = 0x5417
_MAX_SEED = 2**63 - 1


def draw_seeds(seed: int, epoch: int, n: int) -> np.ndarray:
    """One draw seed per dataset index for ``epoch``: int64 array of shape (n,)."""
    rng = np.random.default_rng([seed, epoch, _DRAW_STREAM])
    return rng.integers(0, _MAX_SEED, size=n, dtype=np.int64)


def _fill_batches(order: np.ndarray, lens: np.ndarray, batch_tokens: int, size_multiple: int) -> list[list[int]]:
    """Greedy batches over ``order`` (indices sorted longest first) within the token budget.

    Batches grow in steps of ``size_multiple`` (fp16 kernels like multiples of 8); when even one step
    would break the budget, that step is cut down to what fits (at least one example).
    """
    batches: list[list[int]] = []
    current: list[int] = []
    for start in range(0, len(order), size_multiple):
        chunk = order[start:start + size_multiple].tolist()
        head_len = lens[current[0]] if current else lens[chunk[0]]
        if head_len * (len(current) + len(chunk)) <= batch_tokens:
            current += chunk
            continue
        if current:
            batches.append(current)
        fit = max(1, batch_tokens // lens[chunk[0]])
        while len(chunk) > fit:
            batches.append(chunk[:fit])
            chunk = chunk[fit:]
        current = chunk
    if current:
        batches.append(current)
    return batches


def _balance(batches: list[list[int]], world_size: int) -> list[list[int]]:
    """Make the batch count a multiple of ``world_size`` so each rank gets the same number per epoch.

    The largest batch is split in two (halves never break the budget) until the count divides; only
    when every batch holds a single example are leading batches repeated (an epoch smaller than the
    world size), which is the one case where an example is seen twice in an epoch.
    """
    batches = list(batches)
    while len(batches) % world_size:
        largest = max(range(len(batches)), key=lambda i: len(batches[i]))
        big = batches[largest]
        if len(big) < 2:
            batches += batches[: world_size - len(batches) % world_size]
            break
        half = len(big) // 2
        batches[largest:largest + 1] = [big[:half], big[half:]]
    return batches


class TokenBucketSampler:
    """Infinite, deterministic stream of this rank's batches.

    Args:
        lens: (N,) sequence length of each example (text + specials + regions), in tokens.
        batch_tokens: budget per batch: ``max length in batch * batch size <= batch_tokens``.
        bucket_size: examples are shuffled, cut into buckets of this many, and sorted by length
            inside each bucket, so batches mix little padding with much randomness.
        size_multiple: batch sizes grow in steps of this many.
        seed: base seed of shuffling and of the per-example draw seeds.
        shuffle: shuffle examples and batches each epoch (False keeps index order, for tests).
        rank, world_size: this process's share: global batches ``rank, rank + world_size, ...``.
        start_batch: number of this rank's batches to skip (resume).
    """

    def __init__(self, lens: Sequence[int], batch_tokens: int, bucket_size: int = 8192,
                 size_multiple: int = 8, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, start_batch: int = 0):
        if len(lens) == 0:
            raise ValueError("TokenBucketSampler: no examples (lens is empty)")
        if batch_tokens <= 0 or bucket_size <= 0 or size_multiple <= 0:
            raise ValueError(f"TokenBucketSampler: batch_tokens ({batch_tokens}), bucket_size "
                             f"({bucket_size}) and size_multiple ({size_multiple}) must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"TokenBucketSampler: rank {rank} outside world size {world_size}")
        # A zero length would make the budget test meaningless; count every example as >= 1 token.
        self.lens = np.maximum(np.asarray(lens, dtype=np.int64), 1)
        self.batch_tokens = int(batch_tokens)
        self.bucket_size = int(bucket_size)
        self.size_multiple = int(size_multiple)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.start_batch = int(start_batch)

    def global_batches(self, epoch: int) -> list[Batch]:
        """All ranks' batches of ``epoch`` in order; the count is a multiple of ``world_size``."""
        seeds = draw_seeds(self.seed, epoch, len(self.lens))
        return [[(i, int(seeds[i])) for i in batch] for batch in self._index_batches(epoch)]

    def _index_batches(self, epoch: int) -> list[list[int]]:
        """``global_batches`` without draw seeds (enough to count batches when skipping)."""
        n = len(self.lens)
        rng = np.random.default_rng([self.seed, epoch, _SHUFFLE_STREAM])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        batches: list[list[int]] = []
        for start in range(0, n, self.bucket_size):
            bucket = order[start:start + self.bucket_size]
            # Stable sort keeps the shuffled order among equal lengths.
            bucket = bucket[np.argsort(-self.lens[bucket], kind="stable")]
            batches += _fill_batches(bucket, self.lens, self.batch_tokens, self.size_multiple)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return _balance(batches, self.world_size)

    def rank_batches(self, epoch: int) -> list[Batch]:
        """This rank's share of ``epoch``'s batches."""
        return self.global_batches(epoch)[self.rank::self.world_size]

    def batches(self, start_batch: int = 0) -> Iterator[Batch]:
        """Infinite stream of this rank's batches, skipping the first ``start_batch``.

        Whole epochs are skipped by counting their batches, so resuming costs one sort per skipped epoch.
        """
        epoch, skip = 0, start_batch
        while True:
            per_rank = len(self._index_batches(epoch)) // self.world_size
            if skip >= per_rank:
                skip -= per_rank
            else:
                yield from self.rank_batches(epoch)[skip:]
                skip = 0
            epoch += 1

    def __iter__(self) -> Iterator[Batch]:
        return self.batches(self.start_batch)


class OrderedBatchSampler:
    """Finite, ordered batches for validation/evaluation: each example exactly once across ranks.

    Rank ``r`` takes examples ``r, r + world_size, ...``, sorts them longest first and fills batches
    within ``batch_tokens``. Draw seeds come from epoch 0 of ``seed``, so validation masks are fixed.
    """

    def __init__(self, lens: Sequence[int], batch_tokens: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, size_multiple: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"OrderedBatchSampler: rank {rank} outside world size {world_size}")
        if batch_tokens <= 0:
            raise ValueError(f"OrderedBatchSampler: batch_tokens must be positive, got {batch_tokens}")
        self.lens = np.maximum(np.asarray(lens, dtype=np.int64), 1)
        self.batch_tokens = int(batch_tokens)
        self.size_multiple = int(size_multiple)
        share = np.arange(rank, len(self.lens), world_size)
        order = share[np.argsort(-self.lens[share], kind="stable")]
        seeds = draw_seeds(int(seed), 0, len(self.lens))
        self._batches = [[(i, int(seeds[i])) for i in batch]
                         for batch in _fill_batches(order, self.lens, self.batch_tokens, self.size_multiple)]

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[Batch]:
        return iter([list(b) for b in self._batches])
