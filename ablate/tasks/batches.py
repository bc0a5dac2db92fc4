"""A batch order that is a pure function of (seed, global step).

Batch k draws one part (e.g. an MQAR segment) with probability proportional to its size and then
``batch_size`` distinct examples from it, from a generator seeded by (seed, k). So every variant
in a study sees the same batches in the same order, and a run resumed from an epoch-boundary
checkpoint continues with exactly the batches it would have seen.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset, Sampler, Subset


def ranks(datamodule) -> tuple[int, int]:
    """(this process's rank, world size) of the trainer a datamodule is attached to; (0, 1) alone."""
    trainer = getattr(datamodule, "trainer", None)
    return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)


def shard(dataset: Dataset, rank: int, world_size: int) -> Dataset:
    """Every world_size-th example from rank on: each example in exactly one rank's share (no
    padding, so validation totals summed over ranks count each example once)."""
    return dataset if world_size == 1 else Subset(dataset, range(rank, len(dataset), world_size))


class StepBatchSampler(Sampler[list[int]]):
    """With several ranks (DDP), batch k is the same global batch of ``batch_size`` examples and
    each rank takes its contiguous slice, so the data order is that of one process."""

    def __init__(self, part_sizes: list[int], batch_size: int, steps_per_epoch: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if min(part_sizes) < batch_size:
            raise ValueError(f"batch_size = {batch_size} exceeds a data part of {min(part_sizes)} examples")
        if batch_size % world_size:
            raise ValueError(f"recipe.batch_size = {batch_size} (the global batch) is not a multiple of the "
                             f"{world_size} devices")
        self.sizes = np.asarray(part_sizes)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.batch_size, self.steps_per_epoch, self.seed = batch_size, steps_per_epoch, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of each epoch
        self.epoch = epoch

    def batch(self, step: int) -> list[int]:
        rng = np.random.default_rng([self.seed, step])
        part = rng.choice(len(self.sizes), p=self.sizes / self.sizes.sum())
        idx = rng.choice(self.sizes[part], self.batch_size, replace=False)
        per_rank = self.batch_size // self.world_size
        return (self.offsets[part] + idx[self.rank * per_rank : (self.rank + 1) * per_rank]).tolist()

    def __iter__(self):
        start = self.epoch * self.steps_per_epoch
        for step in range(start, start + self.steps_per_epoch):
            yield self.batch(step)

    def __len__(self) -> int:
        return self.steps_per_epoch
