"""`make report RESULTS=DIR` / `ablate report DIR`: execute the notebooks in analysis/notebooks/
(papermill) with the results directory as their parameter, into DIR/report/, export each to HTML
(nbconvert) and keep every figure as a file (DIR/report/figures/, DIR/report/maps/).

The notebooks only call the functions here and in the other analysis modules: report.ipynb reads
run records, the study storage and CSV logs; maps.ipynb runs the probes (``ablate maps``,
``ablate importance``) on chosen runs, then reads what they wrote.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ablate.analysis.plots import headline_vs, loss_curves, metric_bars, mqar_extrapolation, segment_accuracies
from ablate.analysis.records import load_curves, load_runs
from ablate.analysis.tables import summarize, table_metric_names
from ablate.config import ConfigError

NOTEBOOKS = Path(__file__).resolve().parents[2] / "analysis" / "notebooks"
REPORT_NOTEBOOKS = ("report", "maps")


def finished_runs(results: str | Path) -> pd.DataFrame:
    runs = load_runs(results)
    if runs.empty:
        raise ConfigError(f"{results}: no run records (RESULTS/runs/*/run.json or RESULTS/*/run.json)")
    done = runs[runs["status"] == "finished"]
    if done.empty:
        raise ConfigError(f"{results}: no finished runs (statuses: {', '.join(sorted(set(runs['status'])))})")
    return done


def record_figures(results: str | Path, figures: str | Path) -> tuple[dict[str, Path], dict[str, str]]:
    """The figures drawn from records alone: loss curves, MQAR extrapolation, headline vs cache and
    vs throughput (Pareto fronts), metric bars with CIs; -> (written, {figure: why skipped})."""
    figures = Path(figures)
    runs = finished_runs(results)
    summary = summarize(runs)
    written, skipped = {}, {}
    curves = load_curves(runs)
    if curves.empty:
        skipped["loss curves"] = "no CSV logs (RUN/logs/attempt*/metrics.csv)"
    else:
        written["loss curves"] = loss_curves(curves, figures / "loss_curves.png")
    if not segment_accuracies(summary).empty:
        written["MQAR accuracy vs length and pairs"] = mqar_extrapolation(summary, figures / "mqar_extrapolation.png")
    else:
        skipped["MQAR accuracy vs length and pairs"] = "no MQAR runs"
    if summary["headline"].notna().any():
        written["headline vs cache"] = headline_vs(summary, "cache_MB", figures / "headline_vs_cache.png")
        if summary["tokens_per_s"].notna().any():
            written["headline vs throughput"] = headline_vs(summary, "tokens_per_s",
                                                            figures / "headline_vs_throughput.png")
    written["metrics with 95% CIs"] = metric_bars(summary, table_metric_names(runs), figures / "metric_bars.png")
    return written, skipped


def study_figures(results: str | Path, figures: str | Path, storage: str | None = None):
    """Optuna's plots of the sweep's study; -> (written, {plot: why skipped})."""
    from ablate.analysis.study import default_storage, load_study, study_plots

    try:
        study = load_study(storage or default_storage(results))
    except (FileNotFoundError, ValueError) as err:
        return {}, {"study plots": str(err)}
    return study_plots(study, figures)


def has_model(run_dir: str | Path) -> bool:
    """Whether the probes can load the run's weights, by the two forms ``ablate.api.load_run`` reads
    (not imported: analysis imports no model code): a run's checkpoint or an export's config and
    safetensors. Records copied without checkpoints, e.g. a committed study, cannot be probed."""
    run_dir = Path(run_dir)
    export = (run_dir / "config.json").exists() and (run_dir / "model.safetensors").exists()
    return export or (run_dir / "checkpoints" / "last.ckpt").exists()


def probe_runs(results: str | Path, names: list[str] | None = None) -> list[Path]:
    """Run directories to probe: the named runs (each must hold its weights), else the lowest seed
    of every variant (and grid point) among the runs that hold theirs."""
    runs = finished_runs(results)
    if names:
        missing = sorted(set(names) - set(runs["run"]))
        if missing:
            raise ConfigError(f"{results}: no finished runs named {missing}; have: {', '.join(runs['run'])}")
        chosen = runs[runs["run"].isin(names)]
        without = sorted(chosen.loc[~chosen["dir"].map(has_model), "run"])
        if without:
            raise ConfigError(f"--maps-runs: {', '.join(without)}: no checkpoint (checkpoints/last.ckpt) or export "
                              "(model.safetensors) in the run directory; allowed: runs that keep their weights")
    else:
        runs = runs[runs["dir"].map(has_model)]
        keys = ["task", "variant", *[c for c in runs if c.startswith("grid/")]]
        chosen = runs.sort_values("seed").groupby(keys, sort=False, dropna=False).head(1)
    return [Path(d) for d in chosen.sort_index()["dir"]]


def execute(name: str, out: Path, parameters: dict, kernel: str) -> dict[str, Path]:
    """Run one notebook with papermill and export it to HTML; -> its executed copy and HTML."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    source = NOTEBOOKS / f"{name}.ipynb"
    if not source.exists():
        raise ConfigError(f"{source}: notebook missing (the report notebooks ship with the source tree, "
                          "analysis/notebooks/)")
    executed = out / f"{name}.ipynb"
    # the kernel starts in this process's directory: runs' relative paths (a task's data cache) mean
    # there what they meant where the sweep ran
    papermill.execute_notebook(str(source), str(executed), parameters=parameters, kernel_name=kernel,
                               progress_bar=False, cwd=os.getcwd())
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    html = out / f"{name}.html"
    html.write_text(body, encoding="utf-8")
    return {f"{name}_notebook": executed, f"{name}_html": html}


def write_report(results: str | Path, storage: str | None = None, maps_runs: list[str] | None = None,
                 kernel: str = "python3", compare: list[str] | None = None) -> dict[str, Path]:
    results = Path(results).resolve()
    finished_runs(results)  # a clear error before any kernel starts
    out = results / "report"
    out.mkdir(parents=True, exist_ok=True)
    paths = execute("report", out, {"results": str(results), "figures": str(out / "figures"), "storage": storage},
                    kernel)
    probed = [d.name for d in probe_runs(results, maps_runs)]
    if compare and (len(compare) != 2 or set(compare) - set(probed)):
        raise ConfigError(f"--compare {','.join(compare)}: allowed: two of the probed runs ({', '.join(probed)}; "
                          "--maps-runs chooses them)")
    paths["figures"] = out / "figures"
    if not probed:  # records without weights: the record-only report stands alone
        print(f"maps notebook skipped: no finished run under {results} keeps its checkpoint or export "
              "(the probes load the model)")
        return paths
    paths |= execute("maps", out, {"results": str(results), "out": str(out / "maps"), "runs": maps_runs,
                                   "compare": compare}, kernel)
    paths["maps"] = out / "maps"
    return paths
