"""Epoch orders (samplers): each rank's share of an epoch in an order fixed by (seed, epoch), resumable mid-epoch.

`ResumableSampler` gives one epoch's indices for one rank (and is what testing shards videos with);
`EpochBatches` cuts epoch after epoch into batches of (epoch, index) pairs for one loader pass over a whole
training run, and `EpochDataset` hands each item its epoch, so a sample's augmentation stays keyed by
(seed, epoch, index) whichever worker loads it.

Example:
    >>> sampler = ResumableSampler(5, shuffle=False, rank=1, world_size=2)
    >>> list(sampler)                       # every 2nd index from 1, padded by repeating the head: 1, 3, 0
    [1, 3, 0]
    >>> list(EpochBatches(ResumableSampler(4, shuffle=False), batch_size=2, drop_last=True, epochs=2))
    [[(0, 0), (0, 1)], [(0, 2), (0, 3)], [(1, 0), (1, 1)], [(1, 2), (1, 3)]]
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


class ResumableSampler(torch.utils.data.Sampler[int]):
    """This rank's share of an epoch's (optionally shuffled) order, able to skip samples already consumed.

    The order depends only on (seed, epoch): a permutation from `np.random.default_rng([seed, epoch])`,
    padded by repeating its head to a multiple of the world size (as DistributedSampler does), then
    every world_size-th index from `rank`. `set_epoch(epoch, skip)` drops this rank's first `skip` samples,
    which is how a run resumed mid-epoch continues with exactly the batches it had not yet seen.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if size < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    @property
    def per_rank(self) -> int:
        return -(-self.size // self.world_size)

    def indices(self) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        else:
            order = np.arange(self.size)
        total = self.per_rank * self.world_size
        order = np.resize(order, total)  # pads by repeating from the start
        return order[self.rank :: self.world_size][self.skip :]

    def __iter__(self) -> Iterator[int]:
        return iter(int(i) for i in self.indices())

    def __len__(self) -> int:
        return max(0, self.per_rank - self.skip)


class EpochBatches(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Batches of (epoch, index) pairs, epoch after epoch from `start(epoch, skip)` to the last one, in one pass.

    One iterator for the whole run means the loader's workers run on into the next epoch (and through
    validation and checkpoints) instead of starting afresh with an empty pipeline at every epoch, which costs
    about a batch's decoding time per epoch. Each epoch's order is the `ResumableSampler`'s for that epoch,
    cut into batches on its own (a short last batch is dropped with `drop_last`, never merged into the next).
    `len()` is the batches per epoch.
    """

    def __init__(self, sampler: ResumableSampler, batch_size: int, drop_last: bool, epochs: int) -> None:
        self.sampler, self.batch_size, self.drop_last, self.epochs = sampler, batch_size, drop_last, epochs
        self.first_epoch, self.skip = 0, 0

    def start(self, epoch: int, skip: int) -> None:
        """Where the next iteration begins: `epoch`, after its first `skip` samples (a resumed run)."""
        self.first_epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for epoch in range(self.first_epoch, self.epochs):
            self.sampler.set_epoch(epoch, self.skip if epoch == self.first_epoch else 0)
            order = self.sampler.indices()
            end = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
            for lo in range(0, end, self.batch_size):
                yield [(epoch, int(i)) for i in order[lo:lo + self.batch_size]]

    def __len__(self) -> int:
        n = self.sampler.per_rank
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class EpochDataset(torch.utils.data.Dataset):
    """Wraps a `ClipDataset` so that each item names its epoch: workers need no shared state."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        epoch, i = key
        self.dataset.set_epoch(epoch)
        return self.dataset[i]
