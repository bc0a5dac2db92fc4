"""Optuna study plots (optuna.visualization.matplotlib) from the storage a sweep used: the
optimisation history, the Pareto front (multi-objective studies) and parameter importances
(studies whose trials have searched parameters). A plot the study cannot have is skipped with
the reason, so a grid-only study still gets its history."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna

from ablate.analysis.plots import plt, save


def default_storage(results: str | Path) -> str:
    """A sweep's default storage: SQLite next to its results (``sweep.storage`` in the sweep file)."""
    path = Path(results) / "study.db"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no study database (give the sweep's storage URL if it used another)")
    return f"sqlite:///{path}"


def load_study(storage: str, name: str | None = None) -> optuna.Study:
    """The named study, or the storage's only one."""
    names = optuna.get_all_study_names(storage)
    if name is None:
        if len(names) != 1:
            raise ValueError(f"storage holds studies {names}; name one")
        name = names[0]
    if name not in names:
        raise ValueError(f"no study '{name}' in the storage; it holds {names}")
    return optuna.load_study(study_name=name, storage=storage)


def _figure(ax_or_axes, legend_inside: bool = False):
    """The plot's figure at a readable size (Optuna draws small ones with the legend outside)."""
    first = ax_or_axes.flat[0] if hasattr(ax_or_axes, "flat") else ax_or_axes
    fig = first.get_figure()
    fig.set_size_inches(8, 4.8)
    if legend_inside and first.get_legend() is not None:
        first.legend(loc="best", fontsize=9)
    fig.tight_layout()
    return fig


def study_plots(study: optuna.Study, out: str | Path) -> tuple[dict[str, Path], dict[str, str]]:
    """-> (figures written, {plot: why it was skipped})."""
    from optuna.visualization import matplotlib as vis

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the matplotlib backend
    out = Path(out)
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    written, skipped = {}, {}
    if not done:
        return written, {"all": "no completed trials"}
    multi = len(study.directions) > 1
    if multi:
        skipped["history"] = "a multi-objective study has no single history"
    else:
        name = (study.metric_names or ["objective (the task's headline metric)"])[0]
        ax = vis.plot_optimization_history(study, target_name=f"{name} ({study.direction.name.lower()})")
        ax.set_title(f"study '{study.study_name}': objective by trial ({len(done)} completed)", fontsize=11)
        written["history"] = save(_figure(ax, legend_inside=True), out / "study_history.png")
    if multi:
        ax = vis.plot_pareto_front(study, target_names=study.metric_names)
        ax.set_title(f"study '{study.study_name}': Pareto front of {len(done)} completed trials", fontsize=11)
        written["pareto"] = save(_figure(ax), out / "study_pareto.png")
    else:
        skipped["pareto"] = ("single-objective study (the records' figures mark the Pareto front over cache and "
                             "throughput)")
    searched = {name for t in done for name in t.distributions}
    if len(searched) >= 1 and len(done) >= 2:
        ax = vis.plot_param_importances(study)
        ax.set_title(f"study '{study.study_name}': parameter importances (Optuna's default evaluator)", fontsize=11)
        written["importances"] = save(_figure(ax), out / "study_importances.png")
    else:
        skipped["importances"] = "fewer than two completed trials with parameters"
    plt.close("all")
    return written, skipped
