"""Tables from run records: mean and Student-t 95% CI over seeds, one row per (task, variant, grid
point); markdown, CSV and LaTeX; no model code involved."""

from __future__ import annotations

import dataclasses
import json
import math
import sys

import pandas as pd
import pytest

from ablate.analysis.records import load_runs
from ablate.analysis.tables import ci95, summarize, support_line, to_latex, to_markdown, write_tables
from tests.helpers import write_sweep


def fake_run(root, variant, seed, acc, status="finished", grid=None):
    knobs = "".join(f"-{k}={v}" for k, v in (grid or {}).items())
    d = root / "runs" / f"{variant}-mqar-s{seed}{knobs}"
    d.mkdir(parents=True)
    rec = {"name": d.name, "variant": variant, "task": "mqar", "seed": seed, "status": status,
           **({"config": {"grid": grid}} if grid is not None else {}),
           "params": {"total": 1000, "non_embedding": 800, "attn_ssm_ratio": "1:0"},
           "cache_bytes": {"fp16": {"total": 2_000_000}}, "cache_seq_len": 64, "tokens_per_s": 10.0,
           "metrics": {"val/acc": acc, "val/L64_kv4/acc": acc},
           "metric_specs": [{"name": "val/acc", "direction": "maximize", "help": ""}]}
    (d / "run.json").write_text(json.dumps(rec))


def test_mean_and_ci_over_seeds(tmp_path):
    for seed, acc in enumerate([0.8, 0.9, 1.0]):
        fake_run(tmp_path, "llama", seed, acc)
    fake_run(tmp_path, "mamba", 0, 0.2)
    fake_run(tmp_path, "mamba", 1, 0.0, status="failed")
    summary = summarize(load_runs(tmp_path), order=["mamba", "llama"])
    assert summary["variant"].tolist() == ["mamba", "llama"]
    llama = summary.set_index("variant").loc["llama"]
    assert math.isclose(llama["val/acc"], 0.9)
    assert math.isclose(llama["val/acc ci95"], 4.303 * 0.1 / math.sqrt(3), rel_tol=1e-9)
    assert summary.set_index("variant").loc["mamba", "seeds"] == 1
    md = to_markdown(summary)
    assert "0.900 ± 0.248" in md and "2.000" in md


def test_ci_needs_two_values():
    assert math.isnan(ci95(pd.Series([0.5])))


def test_write_tables_and_no_model_import(tmp_path):
    fake_run(tmp_path, "llama", 0, 0.5)
    for name in [m for m in sys.modules if m.startswith("ablate.model")]:
        del sys.modules[name]
    paths = write_tables(tmp_path)
    assert "ablate.model" not in sys.modules
    assert set(paths) == {"markdown", "csv", "latex", "runs_csv", "plot"}


def test_grid_knobs_key_the_rows_in_numeric_order(tmp_path):
    # run directories sort =16 before =2; the table orders the knob's values as numbers
    for n_heads, accs in [(16, [0.9, 1.0]), (2, [0.1, 0.3])]:
        for seed, acc in enumerate(accs):
            fake_run(tmp_path, "llama", seed, acc, grid={"attention.n_heads": n_heads})
    fake_run(tmp_path, "llama", 0, 0.5)  # a run outside the grid keeps a row of its own
    summary = summarize(load_runs(tmp_path))
    assert list(summary.columns[:4]) == ["task", "variant", "attention.n_heads", "seeds"]
    assert summary["seeds"].tolist() == [2, 2, 1]
    assert summary["attention.n_heads"].tolist()[:2] == [2, 16] and pd.isna(summary["attention.n_heads"][2])
    assert summary["val/acc"].tolist() == pytest.approx([0.2, 0.95, 0.5])
    md = to_markdown(summary)
    assert "| attention.n_heads" in md.splitlines()[0]
    assert "attention.n\\_heads" in to_latex(summary)


def test_a_grid_sweep_has_one_row_per_grid_point(tmp_path):
    """A real tiny sweep over two attention head counts, two seeds each: the table has one row per
    grid point with the knob as a column, its seeds counted within the point."""
    from ablate.sweep.grid import load_sweep
    from ablate.train.identity import identity
    from ablate.train.run import train

    path = write_sweep(tmp_path, variants=["llama"], seeds=[0, 1], grid={"attention.n_heads": [2, 4]})
    sweep = load_sweep(path)
    _, cfg = sweep.runs["llama|mqar|s0|attention.n_heads=4"]
    # the grid assignment is recorded for the tables, but is not part of what the run is
    assert identity(cfg)[1] == identity(dataclasses.replace(cfg, grid={}))[1]
    # each point trained and the tables written as a sweep's worker and launcher do, in this process
    # (a launched sweep adds worker start-up and the study: 20 s instead of 5; test_sweep covers them)
    for point, point_cfg in sweep.runs.values():
        train(point_cfg, sweep.run_dir(point), replace=True)
    write_tables(sweep.results, order=sweep.labels)
    table = pd.read_csv(sweep.results / "table.csv")
    assert list(table.columns[:4]) == ["task", "variant", "attention.n_heads", "seeds"]
    assert table["attention.n_heads"].tolist() == [2, 4] and table["seeds"].tolist() == [2, 2]
    header = (sweep.results / "table.md").read_text().splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")][:4] == ["task", "variant", "attention.n_heads", "seeds"]
    latex = (sweep.results / "table.tex").read_text()
    assert "attention.n\\_heads" in latex and "\\begin{tabular}" in latex and "$\\pm$" in latex


def test_the_support_line_says_what_the_seeds_allow(tmp_path):
    one = tmp_path / "one"
    fake_run(one, "llama", 0, 0.9)
    fake_run(one, "mamba", 0, 0.2)
    assert "one seed per row, so no interval" in support_line(summarize(load_runs(one)))
    many = tmp_path / "many"
    for seed, (a, b, c) in enumerate([(0.90, 0.10, 0.85), (0.92, 0.10, 0.95)]):
        fake_run(many, "llama", seed, a)
        fake_run(many, "mamba", seed, b)
        fake_run(many, "hymba", seed, c)
    summary = summarize(load_runs(many))
    # llama/hymba overlap (hymba's interval is wide); mamba is apart from both
    line = support_line(summary)
    assert "2 seeds per row" in line and "mqar acc: 1 of 3 pairs of rows overlap" in line
    assert "scope: tiny" in to_markdown(summary, scope="tiny")
    fake_run(many, "mamba2", 0, 0.5)  # one seed: no interval
    fake_run(many, "gone", 0, float("nan"))
    fake_run(many, "gone", 1, float("nan"))
    line = support_line(summarize(load_runs(many)))
    assert "1-2 seeds per row (1 row(s) of one seed" in line and "1 row(s) without a headline value" in line
    assert "mqar acc: 4 of 6 pairs of rows overlap" in line  # mamba2 overlaps all three


def test_the_scope_line_survives_a_rebuilt_table(tmp_path):
    fake_run(tmp_path, "llama", 0, 0.9)
    write_tables(tmp_path, scope="tiny models, 600 steps")
    assert "scope: tiny models, 600 steps" in (tmp_path / "table.md").read_text()
    write_tables(tmp_path)  # `ablate table DIR`: no sweep file at hand
    assert "scope: tiny models, 600 steps" in (tmp_path / "table.md").read_text()
    write_tables(tmp_path, scope="")  # the sweep file dropped its scope
    assert "scope:" not in (tmp_path / "table.md").read_text()
