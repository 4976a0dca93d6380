"""Token-bucket batch samplers: deterministic, rank-aware and resumable.

A batch is a list of ``(dataset_index, draw_seed)`` pairs. ``draw_seed`` is an int derived from
``(seed, epoch, dataset_index)``; datasets build ``numpy.random.default_rng(draw_seed)`` from it, so all
masking and negative drawing is reproducible without any global or worker RNG (docs/ARCHITECTURE.md,
"Determinism and resume").

Batches group examples of similar length so that ``max_len * batch_size <= batch_tokens``. Every rank
shuffles the same way and keeps every ``world_size``-th example of the epoch before bucketing, so ranks
agree without communication and each builds only its own plan; resuming is "skip ``start_batch`` batches",
counted epoch by epoch without building any example.
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


def _batch_sizes(sorted_lens: Sequence[int], batch_tokens: int, size_multiple: int) -> list[int]:
    """Sizes of the greedy batches over examples sorted longest first, within the token budget.

    Batches grow in steps of ``size_multiple`` (fp16 kernels like multiples of 8); when even one step
    would break the budget, that step is cut down to what fits (at least one example). The first example
    of a batch is its longest, so ``its length * batch size <= batch_tokens`` is the budget test.
    """
    n = len(sorted_lens)
    if n and int(sorted_lens[0]) * size_multiple <= batch_tokens:
        return _batch_sizes_fast(np.asarray(sorted_lens, dtype=np.int64), batch_tokens, size_multiple)
    sorted_lens = [int(x) for x in sorted_lens]
    sizes: list[int] = []
    size = head_len = 0
    for start in range(0, n, size_multiple):
        step = min(size_multiple, n - start)
        if size and head_len * (size + step) <= batch_tokens:
            size += step
            continue
        if size:
            sizes.append(size)
        first = start
        fit = max(1, batch_tokens // sorted_lens[first])
        while step > fit:  # even one step is over budget: cut it into batches that fit
            sizes.append(fit)
            step -= fit
            first += fit
        size, head_len = step, sorted_lens[first]
    if size:
        sizes.append(size)
    return sizes


def _batch_sizes_fast(sorted_lens: np.ndarray, batch_tokens: int, size_multiple: int) -> list[int]:
    """:func:`_batch_sizes` when no step is ever cut (``longest * size_multiple <= batch_tokens``).

    Then every batch starts on a step boundary, its first example is its longest, and it takes as many
    whole steps as the budget allows for that head (all the rest when fewer remain): the size at every
    possible start is computed at once, and only the jumps from batch to batch are a loop.
    """
    n = len(sorted_lens)
    size_at = np.minimum(n - np.arange(n), size_multiple * (batch_tokens // (sorted_lens * size_multiple)))
    sizes, start = [], 0
    while start < n:
        size = int(size_at[start])
        sizes.append(size)
        start += size
    return sizes


def _fill_batches(order: np.ndarray, lens: np.ndarray, batch_tokens: int, size_multiple: int) -> list[list[int]]:
    """Greedy batches (lists of indices) over ``order`` (indices sorted longest first)."""
    bounds = np.cumsum([0] + _batch_sizes(lens[order], batch_tokens, size_multiple))
    return [order[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]


class EpochPlan:
    """One rank's batches of one epoch as flat arrays (a few bytes per example, no Python lists).

    ``order`` (M,) holds dataset indices batch after batch, ``seeds`` (M,) their draw seeds and
    ``bounds`` (B + 1,) where each batch starts.
    """

    def __init__(self, order: np.ndarray, seeds: np.ndarray, bounds: np.ndarray):
        self.order, self.seeds, self.bounds = order, seeds, bounds

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def batch(self, j: int) -> Batch:
        a, b = int(self.bounds[j]), int(self.bounds[j + 1])
        return list(zip(self.order[a:b].tolist(), self.seeds[a:b].tolist()))

    def batches(self, start: int = 0) -> Iterator[Batch]:
        for j in range(start, len(self)):
            yield self.batch(j)


class TokenBucketSampler:
    """Infinite, deterministic stream of this rank's batches.

    Each epoch, the examples are shuffled with a generator every rank builds alike, and rank ``r`` keeps
    every ``world_size``-th of them (``r, r + world_size, ...``) BEFORE bucketing: a rank sorts and
    batches only its own share, so its plan costs O(N / world_size) time and memory. For one rank this is
    exactly the former global plan. Ranks may end an epoch a few batches apart; each rank's stream is
    infinite, so they stay in step (one batch per micro-step) and the next epoch simply starts earlier on
    one of them.

    Args:
        lens: (N,) sequence length of each example (text + specials + regions), in tokens.
        batch_tokens: budget per batch: ``max length in batch * batch size <= batch_tokens``.
        bucket_size: a rank's shuffled share is cut into buckets of this many, sorted by length inside
            each bucket, so batches mix little padding with much randomness.
        size_multiple: batch sizes grow in steps of this many.
        seed: base seed of shuffling and of the per-example draw seeds.
        shuffle: shuffle examples and batches each epoch (False keeps index order, for tests).
        rank, world_size: this process's share of the examples.
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

    def _shard(self, epoch: int) -> tuple[np.ndarray, np.random.Generator]:
        """This rank's examples of ``epoch`` in shuffled order, and the generator (to shuffle batches)."""
        n = len(self.lens)
        rng = np.random.default_rng([self.seed, epoch, _SHUFFLE_STREAM])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        # Fewer examples than ranks: rank r repeats example r mod N (the only repetition in an epoch).
        picks = np.arange(self.rank, max(n, self.world_size), self.world_size) % n
        return order[picks], rng

    def _bucketed(self, epoch: int) -> tuple[np.ndarray, list[int], np.random.Generator]:
        """(this rank's indices sorted within buckets, batch sizes along them, generator)."""
        shard, rng = self._shard(epoch)
        sorted_parts, sizes = [], []
        for start in range(0, len(shard), self.bucket_size):
            bucket = shard[start:start + self.bucket_size]
            # Stable sort keeps the shuffled order among equal lengths.
            bucket = bucket[np.argsort(-self.lens[bucket], kind="stable")]
            sorted_parts.append(bucket)
            sizes += _batch_sizes(self.lens[bucket], self.batch_tokens, self.size_multiple)
        return np.concatenate(sorted_parts), sizes, rng

    def num_batches(self, epoch: int) -> int:
        """This rank's batch count in ``epoch`` (no draw seeds, no batch shuffle: what skipping needs)."""
        return len(self._bucketed(epoch)[1])

    def plan(self, epoch: int) -> EpochPlan:
        """This rank's batches of ``epoch``, in the order they are served."""
        flat, sizes, rng = self._bucketed(epoch)
        bounds = np.cumsum([0] + sizes)
        if self.shuffle:
            perm = rng.permutation(len(sizes))
            flat = np.concatenate([flat[bounds[j]:bounds[j + 1]] for j in perm])
            bounds = np.cumsum([0] + [sizes[j] for j in perm])
        seeds = draw_seeds(self.seed, epoch, len(self.lens))[flat]
        return EpochPlan(flat, seeds, bounds)

    def rank_batches(self, epoch: int) -> list[Batch]:
        """This rank's batches of ``epoch`` as lists (for tests and small data)."""
        return list(self.plan(epoch).batches())

    def batches(self, start_batch: int = 0) -> Iterator[Batch]:
        """Infinite stream of this rank's batches, skipping the first ``start_batch``.

        Each epoch's plan is built once, when the stream reaches it; skipped epochs are only counted
        (bucket sort, no seeds, no plan arrays), so resuming costs time linear in the position.
        """
        epoch, skip = 0, start_batch
        while True:
            if skip > 0:
                count = self.num_batches(epoch)
                if skip >= count:
                    skip, epoch = skip - count, epoch + 1
                    continue
            yield from self.plan(epoch).batches(skip)
            skip, epoch = 0, epoch + 1

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
