"""A batch order that is a pure function of (seed, global step).

Batch k draws one part (e.g. an MQAR segment) with probability proportional to its size and then
``batch_size`` distinct examples from it, from a generator seeded by (seed, k). So every variant
in a study sees the same batches in the same order, and a run resumed from an epoch-boundary
checkpoint continues with exactly the batches it would have seen.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler


class StepBatchSampler(Sampler[list[int]]):
    def __init__(self, part_sizes: list[int], batch_size: int, steps_per_epoch: int, seed: int):
        if min(part_sizes) < batch_size:
            raise ValueError(f"batch_size = {batch_size} exceeds a data part of {min(part_sizes)} examples")
        self.sizes = np.asarray(part_sizes)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.batch_size, self.steps_per_epoch, self.seed = batch_size, steps_per_epoch, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of each epoch
        self.epoch = epoch

    def batch(self, step: int) -> list[int]:
        rng = np.random.default_rng([self.seed, step])
        part = rng.choice(len(self.sizes), p=self.sizes / self.sizes.sum())
        idx = rng.choice(self.sizes[part], self.batch_size, replace=False)
        return (self.offsets[part] + idx).tolist()

    def __iter__(self):
        start = self.epoch * self.steps_per_epoch
        for step in range(start, start + self.steps_per_epoch):
            yield self.batch(step)

    def __len__(self) -> int:
        return self.steps_per_epoch
