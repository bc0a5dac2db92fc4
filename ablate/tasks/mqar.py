"""Multi-query associative recall (MQAR), following Zoology's protocol (ANCHORS.md section 1).

One example of length L with n key-value pairs:

    k1 v1 k2 v2 ... kn vn | filler ... kq vq ... filler ... kr vr ...
    \\_____ context ____/   \\__ queries at power-law gaps, in random key order ____/

Keys come from [1, V/2) and values from [V/2, V), distinct within an example. The L - 2n
positions after the context are n_slots = (L - 2n) / 2 two-token slots; each query takes the slot
given by a gap drawn without replacement with p(gap = i) ~ a i^(a - 1) (a = 0.01 favours small
gaps). Fillers are uniform over the whole vocabulary. The label at a query key is its value (the
next token); every other label is -100. Accuracy is measured at query positions only.

Train, test and selection sets are drawn from disjoint seed ranges (train < 2^31 <= test < 2^32
<= selection), and every generated segment is cached on disk by a hash of everything that defines
it. ``eval_split: selection`` validates on the test grid's segments drawn from the selection range:
a study picks hyperparameters there (``lr_search``) and reports on the test draws.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from ablate.config import ConfigError, knob, require
from ablate.registry import TASKS
from ablate.tasks.base import Metric, Task, save_atomically
from ablate.tasks.batches import StepBatchSampler, ranks, shard


@dataclass(frozen=True, kw_only=True)
class Segment:
    seq_len: int = knob(64, "tokens per example (even)")
    n_pairs: int = knob(4, "key-value pairs per example")
    n_examples: int = knob(1000, "examples in this segment")

    def __post_init__(self):
        require(self, seq_len=(2, None), n_pairs=(1, None), n_examples=(1, None))

    @property
    def name(self) -> str:
        return f"L{self.seq_len}_kv{self.n_pairs}"


@dataclass(frozen=True, kw_only=True)
class MQARConfig:
    vocab_size: int = knob(8192, "vocabulary: keys from [1, V/2), values from [V/2, V)")
    power_a: float = knob(0.01, "power-law exponent a of the query gaps")
    train: tuple[Segment, ...] = knob(
        (Segment(seq_len=64, n_pairs=4, n_examples=20000),
         Segment(seq_len=128, n_pairs=8, n_examples=20000)),
        "training mixture; each batch holds one sequence length, chosen in proportion to size",
    )
    test: tuple[Segment, ...] = knob(
        (Segment(seq_len=64, n_pairs=4), Segment(seq_len=128, n_pairs=8),
         Segment(seq_len=256, n_pairs=16), Segment(seq_len=256, n_pairs=32)),
        "test grid (longer sequences and more pairs than training measure extrapolation)",
    )
    data_seed: int = knob(123, "base seed of the generated data (same for every run of a study)")
    eval_split: Literal["test", "selection"] = knob(
        "test", "what validation measures: the test draws, or the selection draws (hyperparameter choice)")
    eval_batch_size: int = knob(128, "batch size for evaluation")
    cache_dir: str = knob(".cache/mqar", "where generated segments are cached", identity=False)

    def __post_init__(self):
        require(self, vocab_size=(4, None), eval_batch_size=(1, None))
        for key in ("train", "test"):
            if not getattr(self, key):
                raise ValueError(f"{key} is empty; give at least one segment")
            for i, seg in enumerate(getattr(self, key)):  # what one segment says alone
                check_segment(seg, None, f"{key}[{i}]")


def check_segment(seg: Segment, vocab_size: int | None, where: str) -> None:
    """A segment that cannot be generated is an error naming it (vocab_size None: skip the check
    that needs the vocabulary)."""
    if seg.seq_len % 2:
        raise ValueError(f"{where}: seq_len = {seg.seq_len} must be even")
    if 4 * seg.n_pairs > seg.seq_len:
        raise ValueError(f"{where}: {seg.n_pairs} pairs need seq_len >= {4 * seg.n_pairs} (context + queries)")
    if vocab_size is not None and vocab_size // 2 - 1 < seg.n_pairs:
        raise ValueError(f"{where}: vocab_size = {vocab_size} has fewer than {seg.n_pairs} distinct keys")


def generate(seg: Segment, vocab_size: int, power_a: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> inputs (N, L) int64 and labels (N, L) int64 (-100 off the query positions)."""
    check_segment(seg, vocab_size, f"segment {seg.name}")
    rng = np.random.default_rng(seed)
    N, L, n = seg.n_examples, seg.seq_len, seg.n_pairs
    half = vocab_size // 2
    keys = np.stack([rng.choice(np.arange(1, half), n, replace=False) for _ in range(N)])
    values = np.stack([rng.choice(np.arange(half, vocab_size), n, replace=False) for _ in range(N)])
    inputs = rng.integers(0, vocab_size, size=(N, L))
    labels = np.full((N, L), -100)
    inputs[:, 0 : 2 * n : 2], inputs[:, 1 : 2 * n : 2] = keys, values
    n_slots = (L - 2 * n) // 2
    gap = np.arange(1, n_slots + 1, dtype=np.float64)
    p = power_a * gap ** (power_a - 1)
    p /= p.sum()
    rows = np.arange(N)[:, None]
    slots = np.stack([rng.choice(n_slots, n, replace=False, p=p) for _ in range(N)])
    order = np.argsort(rng.random((N, n)), axis=1)  # which pair each query asks for
    where = 2 * n + 2 * slots
    inputs[rows, where] = keys[rows, order]
    inputs[rows, where + 1] = values[rows, order]
    labels[rows, where] = values[rows, order]
    return torch.from_numpy(inputs), torch.from_numpy(labels)


def cached_segment(seg: Segment, cfg: MQARConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    key = json.dumps([asdict(seg), cfg.vocab_size, cfg.power_a, seed, "mqar-v1"])
    path = Path(cfg.cache_dir) / f"mqar-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"
    if path.exists():
        data = torch.load(path, weights_only=True)
        return data["inputs"], data["labels"]
    inputs, labels = generate(seg, cfg.vocab_size, cfg.power_a, seed)
    save_atomically(path, lambda tmp: torch.save({"inputs": inputs, "labels": labels}, tmp))
    return inputs, labels


SPLIT_OFFSETS = {"train": 0, "test": 1 << 31, "selection": 1 << 32}


def split_seed(cfg: MQARConfig, split: str, index: int) -> int:
    """Disjoint seed ranges: train in [0, 2^31), test in [2^31, 2^32), selection in [2^32, 2^32 + 2^31)."""
    return SPLIT_OFFSETS[split] + (cfg.data_seed * 1009 + index) % (1 << 31)


class MQARData(L.LightningDataModule):
    """Train: batches from one sequence length each (segments of that length mixed), in an order
    fixed by the run seed and the step.
    Validation: one dataloader per test segment (named in ``val_names``)."""

    def __init__(self, cfg: MQARConfig, batch_size: int, steps_per_epoch: int, seed: int):
        super().__init__()
        for i, seg in enumerate(cfg.train + cfg.test):
            check_segment(seg, cfg.vocab_size, f"mqar.{'train' if i < len(cfg.train) else 'test'}")
        self.cfg, self.batch_size, self.steps_per_epoch, self.seed = cfg, batch_size, steps_per_epoch, seed
        self.val_names = [seg.name for seg in cfg.test]
        self.vocab_size = cfg.vocab_size
        self.seq_len = max(s.seq_len for s in cfg.train)

    def setup(self, stage: str | None = None) -> None:
        # Segments of one length are pooled, so a batch mixes their pair counts; batches of
        # different lengths stay separate (no padding).
        by_length: dict[int, list] = {}
        for i, seg in enumerate(self.cfg.train):
            data = cached_segment(seg, self.cfg, split_seed(self.cfg, "train", i))
            by_length.setdefault(seg.seq_len, []).append(data)
        self.train_sets = [TensorDataset(torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts]))
                           for parts in by_length.values()]
        self.test_sets = [TensorDataset(*cached_segment(s, self.cfg, split_seed(self.cfg, self.cfg.eval_split, i)))
                          for i, s in enumerate(self.cfg.test)]

    def train_dataloader(self) -> DataLoader:
        sampler = StepBatchSampler([len(d) for d in self.train_sets], self.batch_size,
                                   self.steps_per_epoch, self.seed, *ranks(self))
        return DataLoader(torch.utils.data.ConcatDataset(self.train_sets), batch_sampler=sampler)

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(shard(d, *ranks(self)), batch_size=self.cfg.eval_batch_size) for d in self.test_sets]


@TASKS.register("mqar")
class MQAR(Task):
    """Recall: accuracy at the query positions, per test segment and averaged over them."""

    config = MQARConfig
    default = True
    metrics = (
        Metric("val/acc", "maximize", "accuracy at query positions, mean over the test segments"),
        Metric("val/loss", "minimize", "cross-entropy at query positions"),
        Metric("val/ppl", "minimize", "exp(val/loss)"),
    )

    @classmethod
    def check(cls, cfg: MQARConfig, where: str) -> None:
        for i, seg in enumerate(cfg.train + cfg.test):
            key = f"train[{i}]" if i < len(cfg.train) else f"test[{i - len(cfg.train)}]"
            try:
                check_segment(seg, cfg.vocab_size, key)
            except ValueError as err:
                raise ConfigError(f"{where}: mqar: {err}") from None

    @classmethod
    def build_data(cls, cfg: MQARConfig, batch_size: int, steps_per_epoch: int, seed: int) -> MQARData:
        return MQARData(cfg, batch_size, steps_per_epoch, seed)
