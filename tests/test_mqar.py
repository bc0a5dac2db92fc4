"""MQAR data follows the Zoology protocol; train and test never share a seed; caching is exact."""

from __future__ import annotations

import pytest
import torch

from ablate.tasks.mqar import MQARConfig, Segment, cached_segment, generate, split_seed


def test_examples_follow_the_protocol():
    V, seg = 64, Segment(seq_len=32, n_pairs=4, n_examples=50)
    x, y = generate(seg, V, 0.01, seed=7)
    assert x.shape == y.shape == (50, 32)
    for row_x, row_y in zip(x, y, strict=True):
        keys, values = row_x[0:8:2], row_x[1:8:2]
        assert len(set(keys.tolist())) == 4 and ((keys >= 1) & (keys < V // 2)).all()
        assert ((values >= V // 2) & (values < V)).all()
        lookup = dict(zip(keys.tolist(), values.tolist(), strict=True))
        queries = (row_y != -100).nonzero().flatten()
        assert len(queries) == 4 and (queries >= 8).all() and (queries % 2 == 0).all()
        for q in queries.tolist():
            assert row_y[q] == lookup[row_x[q].item()] == row_x[q + 1]


def test_power_law_favours_short_gaps():
    _, y = generate(Segment(seq_len=256, n_pairs=8, n_examples=400), 512, 0.01, seed=1)
    gaps = ((y != -100).nonzero()[:, 1] - 16) // 2
    assert (gaps < 30).float().mean() > 0.5


def test_train_and_test_seeds_are_disjoint():
    cfg = MQARConfig()
    train = {split_seed(cfg, "train", i) for i in range(100)}
    test = {split_seed(cfg, "test", i) for i in range(100)}
    assert not train & test and max(train) < 2**31 <= min(test)


def test_cache_returns_the_generated_data(tmp_path):
    cfg = MQARConfig(vocab_size=64, cache_dir=str(tmp_path))
    seg = Segment(seq_len=16, n_pairs=2, n_examples=20)
    first = cached_segment(seg, cfg, 5)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    second = cached_segment(seg, cfg, 5)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert torch.equal(first[0], generate(seg, 64, 0.01, 5)[0])


@pytest.mark.parametrize("seg,msg", [
    (Segment(seq_len=15, n_pairs=2), "even"),
    (Segment(seq_len=16, n_pairs=5), "need seq_len"),
])
def test_bad_segments(seg, msg):
    with pytest.raises(ValueError, match=msg):
        generate(seg, 64, 0.01, 0)


def _cache_one_segment(cache_dir: str, barrier) -> None:
    import numpy as np

    np.random.seed(0)  # every worker of a study is seeded alike
    cfg = MQARConfig(vocab_size=64, cache_dir=cache_dir)
    barrier.wait()  # all start generating together, as the workers of a new study do
    cached_segment(Segment(seq_len=32, n_pairs=4, n_examples=3000), cfg, seed=7)


def test_workers_generating_one_segment_at_once_all_succeed(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_cache_one_segment, args=(str(tmp_path), barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert [p.name for p in tmp_path.iterdir()] == [next(tmp_path.glob("mqar-*.pt")).name]  # no temporaries left
