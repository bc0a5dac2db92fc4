"""`make report` on a real tiny sweep: both notebooks execute without an error cell, their HTML
exports hold every figure, and every figure file is a non-empty PNG."""

from __future__ import annotations

import base64
import contextlib
import io
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from ablate.cli import main
from ablate.sweep.launch import launch
from tests.helpers import write_sweep

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    meta = {"name": "roadmap-e-meta", "label": "+meta",
            "sets": {"layout.window": 8, "layout.global_layers": ["first"], "layout.kv_groups": [[0, 1]], "n_meta": 4}}
    path = write_sweep(tmp, name="tiny", variants=["llama", "roadmap-b-parallel", meta], seeds=[0, 1],
                       mqar={"vocab_size": 32, "cache_dir": str(tmp / "cache"),
                             "train": [{"seq_len": 16, "n_pairs": 2, "n_examples": 200}],
                             "test": [{"seq_len": 16, "n_pairs": 2, "n_examples": 50},
                                      {"seq_len": 32, "n_pairs": 4, "n_examples": 50}]})
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert launch(str(path), workers=2) == 0
    # the sweep's summary ends by naming the report command
    assert f"make report RESULTS={tmp / 'results'}" in printed.getvalue().splitlines()[-1]
    return tmp / "results"


def test_make_report_executes_the_notebooks_into_results_report(tiny_sweep):
    compare = "roadmap-b-parallel-mqar-s0,_meta-mqar-s0"  # App. D: the parallel head without and with meta tokens
    done = subprocess.run(["make", "-s", "-C", str(ROOT), "report", f"RESULTS={tiny_sweep}", f"PY={sys.executable}",
                           f"ARGS=--compare {compare}"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = tiny_sweep / "report"
    html = ""
    for name in ("report", "maps"):
        book = nbformat.read(report / f"{name}.ipynb", as_version=4)
        errors = [o for cell in book.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, (name, errors)
        html += (report / f"{name}.html").read_text(encoding="utf-8")
    pngs = sorted(report.rglob("*.png"))
    names = {p.name for p in pngs}
    # the figures from records, Optuna's history, the map figures of the probed runs and their statistics
    assert {"loss_curves.png", "mqar_extrapolation.png", "headline_vs_cache.png", "headline_vs_throughput.png",
            "metric_bars.png", "study_history.png", "map_mass.png", "map_entropy.png", "importance.png",
            "layer0.png", "layer1.png"} <= names, names
    assert len([p for p in pngs if p.name == "layer0.png"]) == 3  # one probed run per variant
    for png in pngs:
        data = png.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 2000, png
        assert base64.b64encode(data).decode() in html, f"{png} is not in the HTML"
    assert (report / "maps" / "map_stats.csv").read_text().count("\n") > 1
    comparison = (report / "maps" / "entropy_comparison.csv").read_text()
    assert comparison.startswith("path,layer,roadmap-b-parallel-mqar-s0,_meta-mqar-s0,")
    assert sorted(report.rglob("layer0.pdf"))


def test_report_of_a_directory_without_runs_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no run records" in capsys.readouterr().err


def test_report_compares_two_probed_runs_only(tiny_sweep, capsys):
    assert main(["report", str(tiny_sweep), "--compare", "llama-mqar-s0,nope"]) == 2
    err = capsys.readouterr().err
    assert "allowed: two of the probed runs (_meta-mqar-s0, llama-mqar-s0, roadmap-b-parallel" in err


def test_analysis_imports_no_model_code():
    """The figures and tables come from files alone: importing every analysis module loads neither
    torch nor the model (the probes, which do, are ablate.probe)."""
    modules = sorted(p.stem for p in (ROOT / "ablate" / "analysis").glob("*.py") if p.stem != "__init__")
    heavy = ("torch", "ablate.model", "ablate.mixers", "ablate.probe")
    script = ("import sys\n" + "".join(f"import ablate.analysis.{m}\n" for m in modules)
              + f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_study_plots_draw_what_the_study_has(tmp_path):
    """Searched parameters give an importance plot, two objectives a Pareto front; a study whose
    trials have no parameters gets its history and the reasons for the rest."""
    import optuna

    from ablate.analysis.study import study_plots

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searched = optuna.create_study(study_name="searched", direction="maximize")
    searched.optimize(lambda t: t.suggest_float("lr", 0, 1) - t.suggest_int("heads", 1, 4) / 8, n_trials=6)
    written, skipped = study_plots(searched, tmp_path / "a")
    assert set(written) == {"history", "importances"} and set(skipped) == {"pareto"}
    both = optuna.create_study(study_name="both", directions=["maximize", "minimize"])
    both.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=6)
    written, skipped = study_plots(both, tmp_path / "b")
    assert set(written) == {"pareto", "importances"} and set(skipped) == {"history"}
    grid = optuna.create_study(study_name="grid", direction="maximize")
    for value in (0.1, 0.3):
        grid.enqueue_trial({})
        grid.optimize(lambda t, v=value: v, n_trials=1)
    written, skipped = study_plots(grid, tmp_path / "c")
    assert set(written) == {"history"} and "with parameters" in skipped["importances"]
    for png in (tmp_path / "a").glob("*.png"):
        assert png.stat().st_size > 2000


def test_records_without_checkpoints_report_without_maps(tiny_sweep, tmp_path, capsys):
    """A committed study keeps records and curves, not checkpoints: the probes pick only runs that
    hold their weights, the report runs from the records alone and says the maps were skipped, and
    naming a run without weights is a clear error."""
    import shutil

    from ablate.analysis.report import probe_runs, write_report

    copy = tmp_path / "records"
    shutil.copytree(tiny_sweep, copy, ignore=shutil.ignore_patterns("report"))
    kept = copy / "runs" / "llama-mqar-s1"  # the second seed keeps its checkpoint: probed instead of s0
    for ckpt in copy.glob("runs/*/checkpoints"):
        if ckpt.parent != kept:
            shutil.rmtree(ckpt)
    assert [d.name for d in probe_runs(copy)] == ["llama-mqar-s1"]
    assert main(["report", str(copy), "--maps-runs", "llama-mqar-s0"]) == 2
    assert "llama-mqar-s0: no checkpoint" in capsys.readouterr().err
    shutil.rmtree(kept / "checkpoints")
    paths = write_report(copy)
    assert "maps notebook skipped" in capsys.readouterr().out
    assert "maps_notebook" not in paths and (copy / "report" / "report.html").stat().st_size > 2000
