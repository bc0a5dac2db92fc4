"""Attention and SSM maps: the SSM implicit map computed in chunks equals the dense formula and
reproduces the SSM output; maps of a real model are causal rows summing to 1; the statistics on
hand-made matrices; `ablate maps` on a trained run writes arrays, statistics and figures."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

from ablate.analysis.maps import entropy, entropy_comparison, load_layer, map_stats, mass, row_entropy
from ablate.cli import main
from ablate.config import ConfigError, Mamba2Config, MambaConfig
from ablate.mixers.base import Context
from ablate.mixers.paths import mamba, mamba2
from ablate.model import LM
from ablate.ops.backends import Backends
from ablate.ops.scan.reference import selective_scan
from ablate.ops.ssd.reference import ssd
from ablate.probe.maps import layer_maps, parse_layers
from ablate.train.config import run_config
from ablate.train.run import train
from ablate.variants import load_variant
from tests.conftest import tiny
from tests.helpers import TINY_MODEL, tiny_mqar


def mamba1_path(T: int = 13):
    ssm = mamba.MambaSSM(16, 32, MambaConfig(d_state=4), 1e-6, Backends()).double()
    u = torch.randn(2, T, ssm.in_dim, dtype=torch.float64)
    return ssm, ssm.prepare(u, Context(pos=torch.arange(T)))


def mamba2_path(T: int = 13):
    ssm = mamba2.Mamba2SSM(64, Mamba2Config(d_state=8, head_dim=16, n_groups=2), 1e-6, Backends()).double()
    u = torch.randn(2, T, ssm.in_dim, dtype=torch.float64)
    return ssm, ssm.prepare(u, Context(pos=torch.arange(T)))


def test_mamba1_map_by_blocks_equals_the_dense_formula_and_reproduces_the_scan():
    ssm, (x, z, dt, B, C) = mamba1_path()
    dense = mamba.dense_implicit_map(ssm, dt, B, C)
    for block in (1, 4, 64):  # blocks that split the 13 positions unevenly, and one block for all
        torch.testing.assert_close(ssm.implicit_map(dt, B, C, block=block), dense, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ssm.implicit_map(dt, B, C, slice(5, 9)), dense[:, 5:9], rtol=1e-5, atol=1e-6)
    # y (before the gate) = alpha @ x + D x, channel by channel
    y = selective_scan(x, dt, ssm.A, B, C, ssm.D, None, ssm.dt_proj.bias)
    alpha = ssm.implicit_map(dt, B, C, block=4).to(x.dtype)
    from_map = torch.einsum("bdij,bdj->bdi", alpha, x) + ssm.D[:, None] * x
    torch.testing.assert_close(from_map, y, rtol=1e-4, atol=1e-5)


def test_mamba2_map_by_heads_equals_the_dense_formula_and_reproduces_ssd():
    ssm, (x, z, dt, B, C) = mamba2_path()
    dense = mamba2.dense_implicit_map(ssm, dt, B, C)
    torch.testing.assert_close(ssm.implicit_map(dt, B, C), dense, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ssm.implicit_map(dt, B, C, slice(1, 3)), dense[:, 1:3], rtol=1e-5, atol=1e-6)
    y = ssd(x, dt, ssm.A, B, C, ssm.D)
    from_map = torch.einsum("bhij,bjhp->bihp", ssm.implicit_map(dt, B, C).to(x.dtype), x) + ssm.D[:, None] * x
    torch.testing.assert_close(from_map, y.to(from_map.dtype), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("path", [mamba1_path, mamba2_path])
def test_grouped_map_is_the_mean_magnitude_of_the_dense_map_per_group(path):
    ssm, (_, _, dt, B, C) = path()
    dense = (mamba.dense_implicit_map if isinstance(ssm, mamba.MambaSSM) else mamba2.dense_implicit_map)(ssm, dt, B, C)
    for groups, chunk in ((2, 3), (ssm.map_units, 1), (1, 8)):  # chunks that straddle nothing and split groups
        expected = dense.abs().unflatten(1, (groups, -1)).mean(2)
        torch.testing.assert_close(ssm.grouped_map(dt, B, C, groups, chunk), expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="do not split into 3 groups"):
        ssm.grouped_map(dt, B, C, 3)


@pytest.mark.parametrize("variant", ["roadmap-e-meta", "mamba2", "llama"])
def test_maps_of_a_model_are_causal_rows_summing_to_one(variant):
    cfg = tiny(load_variant(variant).model)
    model = LM(cfg).eval()
    T = 12
    maps = layer_maps(model, torch.randint(0, cfg.size.vocab_size, (T,)))
    S = T + cfg.n_meta
    above = np.triu(np.ones((S, S), dtype=bool), 1)
    assert len(maps) == cfg.size.n_layers
    for layer in maps.values():
        assert layer  # every layer has at least one path
        for kind, m in layer.items():
            assert m.shape[1:] == (S, S), kind
            np.testing.assert_allclose(m.sum(-1), 1, rtol=1e-5)
            assert np.abs(m[:, above]).max() == 0, kind


def test_maps_at_1024_tokens_take_seconds_on_a_cpu():
    cfg = tiny(load_variant("roadmap-b-parallel").model, d_model=64)
    model = LM(cfg).eval()
    started = time.perf_counter()
    maps = layer_maps(model, torch.randint(0, cfg.size.vocab_size, (1024,)), [0])
    elapsed = time.perf_counter() - started
    assert maps[0]["ssm"].shape == (2, 1024, 1024) and elapsed < 20, elapsed


def hand_made(n_meta: int, S: int, columns: dict[int, float]) -> np.ndarray:
    """One head whose every real row puts the given mass on absolute columns (-1: self, -2: prev)."""
    m = np.zeros((1, S, S))
    for i in range(S):
        m[0, i, 0] = 1.0  # rows before the measured ones: anything that sums to 1
    for i in range(n_meta + 2, S):
        m[0, i] = 0
        for col, p in columns.items():
            m[0, i, {-1: i, -2: i - 1}.get(col, col)] += p
    return m


def test_mass_categories_partition_each_row():
    n_meta, S = 2, 10
    m = hand_made(n_meta, S, {0: 0.1, 1: 0.2, 2: 0.3, -1: 0.15, -2: 0.05, 5: 0.2})
    got = mass(m, n_meta)
    # column 5 is "prev" for row 6 and "self" for row 5; elsewhere it is "other"
    rows = np.arange(n_meta + 2, S)
    expected_other = np.mean([0.2 if i not in (5, 6) else 0.0 for i in rows])
    assert got["meta"][0] == pytest.approx(0.3) and got["bos"][0] == pytest.approx(0.3)
    assert got["other"][0] == pytest.approx(expected_other)
    assert sum(v[0] for v in got.values()) == pytest.approx(1.0)


def test_entropy_on_hand_made_maps():
    n_meta, S = 3, 9
    # uniform over the causal keys: row i has entropy log(i + 1); one-hot rows: 0
    uniform = np.tril(np.ones((S, S)))
    uniform = (uniform / uniform.sum(-1, keepdims=True))[None]
    got = entropy(uniform, n_meta)
    assert got["entropy"][0] == pytest.approx(np.mean([np.log(i + 1) for i in range(n_meta, S)]))
    # without the meta columns: uniform over the i - n_meta + 1 real keys
    assert got["entropy_real"][0] == pytest.approx(np.mean([np.log(i - n_meta + 1) for i in range(n_meta, S)]))
    assert row_entropy(np.eye(4))[0] == 0
    half = np.zeros((1, S, S))
    half[0, :, 0] = half[0, :, 1] = 0.5
    assert entropy(half, 0)["entropy"][0] == pytest.approx(np.log(2))


def test_parse_layers_names_what_is_allowed():
    assert parse_layers("0, 2", 3) == [0, 2] and parse_layers(None, 2) == [0, 1]
    for bad in ("3", "x", "-1"):
        with pytest.raises(ConfigError, match=r"allowed: comma-separated layer indices in 0\.\.2"):
            parse_layers(bad, 3)


@pytest.fixture(scope="module")
def trained_meta_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("maps")
    extra = ["layout.window=4", "layout.global_layers=[first]", "layout.kv_groups=[[0, 1]]", "n_meta=2"]
    train(tiny_mqar(tmp, variant="roadmap-e-meta", steps=10, every=5, extra=extra), tmp / "run")
    return tmp / "run"


def test_maps_command_writes_arrays_statistics_and_figures(trained_meta_run, tmp_path, capsys):
    out = tmp_path / "maps"
    assert main(["maps", str(trained_meta_run), "--out", str(out), "--seq-len", "24", "--pairs", "3"]) == 0
    meta = json.loads((out / "maps.json").read_text())
    assert meta["n_meta"] == 2 and len(meta["tokens"]) == 24
    marks = meta["marks"]
    assert marks["key"] == [0, 2, 4] and marks["value"] == [1, 3, 5] and len(marks["query"]) == 3
    tokens = np.array(meta["tokens"])
    assert all(tokens[q] in tokens[[0, 2, 4]] for q in meta["marks"]["query"])  # queries repeat context keys
    assert set(meta["layers"]) == {"0", "1"} and set(load_layer(out, 0)) == {"attention", "ssm"}
    assert load_layer(out, 1)["ssm"].shape == (2, 26, 26)  # 2 head groups over 2 meta + 24 tokens
    stats = map_stats(out)
    assert stats.equals(pd.read_csv(out / "map_stats.csv"))
    assert set(stats["path"]) == {"attention", "ssm"} and (stats["meta"] > 0).all()
    for layer in (0, 1):
        for suffix in ("png", "pdf"):
            assert (out / f"layer{layer}.{suffix}").stat().st_size > 1000
    assert "map_stats.csv" in capsys.readouterr().out


def test_maps_command_errors_name_the_option(trained_meta_run, tmp_path, capsys):
    assert main(["maps", str(trained_meta_run), "--out", str(tmp_path), "--layers", "7"]) == 2
    assert "--layers '7'" in capsys.readouterr().err
    assert main(["maps", str(trained_meta_run), "--out", str(tmp_path), "--input", "text"]) == 2
    assert "needs a run with a tokenizer" in capsys.readouterr().err
    assert main(["maps", str(trained_meta_run), "--out", str(tmp_path), "--input", "image"]) == 2
    assert "allowed: task, text" in capsys.readouterr().err


def test_maps_and_importance_of_a_text_run(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. a stitch in time saves nine.\n" * 100)
    sets = TINY_MODEL + [f"text.train=[{corpus}]", f"text.val=[{corpus}]", "text.vocab_size=300", "text.seq_len=32",
                         f"text.cache_dir={tmp_path / 'cache'}", "recipe.max_steps=6", "recipe.eval_every=3",
                         "recipe.batch_size=4", "recipe.warmup_steps=1"]
    run_dir = tmp_path / "run"
    train(run_config("roadmap-b-parallel", "text", sets), run_dir)
    out = tmp_path / "given"
    assert main(["maps", str(run_dir), "--input", "text", "--text", "the lazy dog jumps", "--out", str(out)]) == 0
    meta = json.loads((out / "maps.json").read_text())
    assert "".join(meta["token_labels"]).replace("Ġ", " ") == "the lazy dog jumps" and not meta["marks"]
    assert main(["maps", str(run_dir), "--input", "text", "--seq-len", "20", "--out", str(tmp_path / "val")]) == 0
    assert len(json.loads((tmp_path / "val" / "maps.json").read_text())["tokens"]) == 20
    assert main(["maps", str(run_dir), "--pairs", "2", "--out", str(tmp_path / "x")]) == 2
    assert "--pairs is for MQAR runs" in capsys.readouterr().err
    assert main(["importance", str(run_dir), "--no-heads", "--limit", "4"]) == 0
    table = pd.read_csv(run_dir / "importance" / "importance.csv")
    assert (table["metric"] == "val/loss").all() and (table["direction"] == "minimize").all()


def test_entropy_comparison_of_two_runs():
    stats = pd.DataFrame([{"run": run, "variant": run, "layer": layer, "path": "attention", "head": head,
                           "entropy": value + head}
                          for run, value in (("d", 2.0), ("e", 1.5)) for layer in (0, 1) for head in (0, 1)])
    table = entropy_comparison(stats, ["d", "e"])
    assert list(table.columns) == ["path", "layer", "d", "e", "e - d"]
    assert table["d"].tolist() == [2.5, 2.5] and table["e - d"].tolist() == [-0.5, -0.5]
    with pytest.raises(ValueError, match="have: d, e"):
        entropy_comparison(stats, ["d", "x"])
