"""Tables from run records: mean and Student-t 95% CI over seeds; no model code involved."""

from __future__ import annotations

import json
import math
import sys

from ablate.analysis.records import load_runs
from ablate.analysis.tables import ci95, summarize, to_markdown, write_tables


def fake_run(root, variant, seed, acc, status="finished"):
    d = root / "runs" / f"{variant}-mqar-s{seed}"
    d.mkdir(parents=True)
    rec = {"name": d.name, "variant": variant, "task": "mqar", "seed": seed, "status": status,
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
    import pandas as pd

    assert math.isnan(ci95(pd.Series([0.5])))


def test_write_tables_and_no_model_import(tmp_path):
    fake_run(tmp_path, "llama", 0, 0.5)
    for name in [m for m in sys.modules if m.startswith("ablate.model")]:
        del sys.modules[name]
    paths = write_tables(tmp_path)
    assert "ablate.model" not in sys.modules
    assert set(paths) == {"markdown", "csv", "runs_csv", "plot"}
