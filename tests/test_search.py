"""Search studies: samplers, several objectives, pruning, exactly-once trials, retries with the same
parameters, and grid points as real trial parameters."""

from __future__ import annotations

import json
import multiprocessing as mp
import time

import optuna
import pandas as pd
import pytest
import torch
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from ablate.config import ConfigError
from ablate.sizing import count_params
from ablate.sweep.grid import load_sweep, sweep_path
from ablate.sweep.launch import launch
from ablate.sweep.study import claim, open_storage, open_study, worker
from tests.helpers import write_sweep

LR = {"recipe.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}}
META = {"n_meta": {"type": "int", "low": 0, "high": 8, "step": 4}}


def search_file(tmp_path, name="s", **more):
    more.setdefault("search", {**META, **LR})
    more.setdefault("n_trials", 6)
    more.setdefault("seeds", [0])
    tmp_path.mkdir(parents=True, exist_ok=True)
    return write_sweep(tmp_path, name=name, variants=["roadmap-b-parallel"], **more)


def trials_of(path):
    sweep = load_sweep(path)
    return optuna.load_study(study_name=sweep.cfg.name, storage=sweep.storage).get_trials()


def test_a_tpe_study_is_reproducible_with_one_worker(tmp_path):
    runs = []
    for attempt in ("a", "b"):
        path = search_file(tmp_path / attempt, sampler={"name": "tpe", "seed": 3, "n_startup_trials": 2})
        assert launch(str(path), workers=1) == 0
        trials = trials_of(path)
        assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
        assert all(set(t.params) == {"n_meta", "recipe.lr"} and t.values for t in trials)
        runs.append([t.params for t in trials])
    assert runs[0] == runs[1]  # the same seed proposes the same trials
    record = json.loads(next((tmp_path / "a" / "results" / "runs").glob("*/run.json")).read_text())
    assert set(record["config"]["grid"]) == {"n_meta", "recipe.lr"}  # the values are the row key of the table


def test_a_two_objective_nsga2_study_writes_its_pareto_front(tmp_path):
    objectives = [{"metric": "val/acc"}, {"metric": "cache_mb"}]
    path = search_file(tmp_path, objectives=objectives, sampler={"name": "nsga2", "seed": 0, "population_size": 4})
    assert launch(str(path), workers=1) == 0
    sweep = load_sweep(path)
    study = optuna.load_study(study_name="s", storage=sweep.storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert all(len(t.values) == 2 and t.params for t in study.get_trials())
    front = pd.read_csv(sweep.results / "study" / "pareto.csv")
    assert sorted(front["trial"]) == sorted(t.number for t in study.best_trials)
    for _, row in front.iterrows():  # each front row is its trial: values, params, run
        t = study.trials[int(row["trial"])]
        assert [row["val/acc"], row["cache_mb"]] == pytest.approx(t.values)
        record = json.loads((sweep.results / "runs" / row["run_dir"].split("/")[-1] / "run.json").read_text())
        assert record["cache_bytes"]["fp16"]["total"] / 1e6 == pytest.approx(row["cache_mb"])
        assert record["config"]["model"]["n_meta"] == row["param/n_meta"]
    assert (sweep.results / "study" / "study_pareto.png").stat().st_size > 0
    assert study.metric_names == ["val/acc", "cache_mb"]  # what Optuna's plots and the dashboard label


@pytest.fixture(scope="module")
def pruned_study(tmp_path_factory):
    """A 2-trial study with the median pruner: the grid sampler's slots, in its seeded order, are
    lr 0.01 first, then 1e-7 (the deliberately bad trial)."""
    path = search_file(tmp_path_factory.mktemp("pruned"),
                       search={"recipe.lr": {"type": "categorical", "choices": [0.01, 1.0e-7]}},
                       n_trials=2, objectives=[{"metric": "val/loss"}],
                       sampler={"name": "grid", "seed": 0}, pruner={"name": "median", "n_startup_trials": 1},
                       recipe={"max_steps": 20, "eval_every": 5, "batch_size": 8, "warmup_steps": 2})
    assert launch(str(path), workers=1) == 0
    return path


def test_the_median_pruner_prunes_a_bad_trial_and_keeps_its_checkpoint(pruned_study):
    trials = trials_of(pruned_study)
    by_lr = {t.params["recipe.lr"]: t for t in trials}
    assert by_lr[0.01].state == TrialState.COMPLETE and by_lr[0.01].number == 0
    bad = by_lr[1.0e-7]
    assert bad.state == TrialState.PRUNED
    run_dir = load_sweep(pruned_study).results / "runs" / bad.user_attrs["run_dir"].split("/")[-1]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "pruned" and record["steps"] < 20 and "val/loss" in record["metrics"]
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    good = by_lr[0.01]  # every evaluation's value is the trial's intermediate value
    assert sorted(good.intermediate_values) == [5, 10, 15, 20]
    assert good.intermediate_values[20] == pytest.approx(good.value)
    assert max(bad.intermediate_values) == record["steps"]


def test_optuna_dashboard_shows_every_trials_params_values_and_intermediate_values(pruned_study):
    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    from wsgiref.util import setup_testing_defaults

    sweep = load_sweep(pruned_study)
    app = optuna_dashboard.wsgi(open_storage(sweep.storage))

    def get(path: str, query: str = "") -> dict:
        env = {}
        setup_testing_defaults(env)
        env.update(PATH_INFO=path, QUERY_STRING=query)
        status = []
        body = b"".join(app(env, lambda s, headers, *exc: status.append(s)))
        assert status == ["200 OK"], (path, status)
        return json.loads(body)

    (summary,) = get("/api/studies")["study_summaries"]
    assert summary["study_name"] == "s" and summary["directions"] == ["minimize"]
    shown = get(f"/api/studies/{summary['study_id']}", "after=0")["trials"]
    for trial, stored in zip(shown, trials_of(pruned_study), strict=True):
        assert [p["name"] for p in trial["params"]] == ["recipe.lr"]
        assert float(trial["params"][0]["param_external_value"]) == stored.params["recipe.lr"]
        assert {v["step"]: v["value"] for v in trial["intermediate_values"]} == \
            pytest.approx(stored.intermediate_values)
        assert trial["values"] == (stored.values if stored.values else None) or trial["state"] == "Pruned"


def _worker(path, url):
    worker(path, url, threads=1)


def test_two_workers_run_exactly_n_trials_and_no_parameter_set_twice(tmp_path):
    path = search_file(tmp_path, sampler={"name": "random", "seed": 0})
    sweep = load_sweep(path)
    open_study(sweep, open_storage(sweep.storage))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(path), sweep.storage)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
        assert p.exitcode == 0
    trials = trials_of(path)
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 6
    records = [json.loads(p.read_text()) for p in (sweep.results / "runs").glob("*/run.json")]
    assert len(records) == 6 and all(r["attempts"] == 1 for r in records)


def test_a_killed_workers_trial_is_retried_with_the_same_parameters(tmp_path):
    path = search_file(tmp_path, n_trials=1, sampler={"name": "random", "seed": 0})
    sweep = load_sweep(path)
    storage = open_storage(sweep.storage, heartbeat_s=1, grace_s=1)
    study = open_study(sweep, storage)
    trial_id, number, _ = claim(study, storage)  # a worker takes the slot, is proposed values, and dies
    study.sampler = sweep.search.sampler.build(number, sweep.search.space)
    from ablate.sweep.search import suggest

    proposed = suggest(optuna.Trial(study, trial_id), sweep.search.space)
    time.sleep(2.5)
    fail_stale_trials(study)
    assert sorted(t.state.name for t in study.get_trials()) == ["FAIL", "WAITING"]
    assert worker(str(path), sweep.storage, threads=1) == 1
    done = study.get_trials()[-1]
    assert done.state == TrialState.COMPLETE and done.params == proposed


def test_grid_points_are_trial_parameters(tmp_path):
    path = write_sweep(tmp_path, variants=["llama", "mamba"], seeds=[0], grid={"mlp.hidden": [32, 64]})
    assert launch(str(path), workers=1) == 0
    frame = optuna.load_study(study_name="t", storage=load_sweep(path).storage).trials_dataframe()
    assert sorted(zip(frame["params_variant"], frame["params_mlp.hidden"], strict=True)) == \
        [("llama", 32), ("llama", 64), ("mamba", 32), ("mamba", 64)]
    assert set(frame["params_seed"]) == {0} and frame["value_val/acc"].notna().all()  # named by the objective


@pytest.mark.parametrize("more,expected", [
    ({"search": {"n_meta": {"type": "int", "low": 8, "high": 0}}}, ["search.n_meta", "low"]),
    ({"search": {"n_meta": {"type": "integer", "low": 0, "high": 8}}}, ["search.n_meta.type", "categorical"]),
    ({"search": {"recipe.lr": {"type": "float", "low": 0, "high": 1, "log": True}}}, ["search.recipe.lr"]),
    ({"search": {"size.width": {"type": "int", "low": 1, "high": 2}}}, ["size.width", "d_model"]),
    ({"objectives": [{"metric": "val/accuracy"}]}, ["objectives[0].metric", "val/acc", "cache_mb"]),
    ({"objectives": [{"metric": "val/acc"}, {"metric": "cache_mb"}], "pruner": {"name": "median"}},
     ["pruner", "single-objective"]),
    ({"n_trials": 0}, ["n_trials", ">= 1"]),
    ({"seeds": [0, 1]}, ["one seed"]),
    ({"sampler": {"name": "grid"}}, ["grid sampler", "recipe.lr"]),
])
def test_bad_search_files(tmp_path, more, expected):
    path = search_file(tmp_path, **more)
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    for text in ["s.yaml", *expected]:
        assert text in str(err.value)


def test_a_stored_study_with_other_directions_is_an_error(tmp_path):
    path = search_file(tmp_path)
    sweep = load_sweep(path)
    storage = open_storage(sweep.storage)
    optuna.create_study(study_name="s", storage=storage, direction="minimize")
    with pytest.raises(ConfigError, match="optimises .'minimize'.*'maximize'"):
        open_study(sweep, storage)


def ratio(counts) -> float:
    return float(counts.attn_ssm_ratio.split(":")[1])


def test_head_ratio_spans_the_papers_attention_ssm_ratios_at_one_size():
    sweep = load_sweep(sweep_path("head_ratio"))
    target = sweep.cfg.match.target
    counts = [count_params(cfg.model) for _, cfg in sweep.runs.values()]
    assert max(map(ratio, counts)) >= 8.48 and min(map(ratio, counts)) <= 2.12  # Table 10 rows 2-4
    assert all(abs(c.non_embedding - target) <= 0.01 * target for c in counts)
    ratios = [ratio(c) for (p, _), c in zip(sweep.runs.values(), counts, strict=True) if p.seed == 0]
    assert ratios == sorted(ratios, reverse=True)  # more attention heads, less SSM width


def test_the_ratio_knob_moves_width_from_the_ssm_to_attention():
    from ablate.config import override
    from ablate.sizing import match
    from ablate.variants import load_variant

    base = load_variant("roadmap-b-parallel").model
    for key, value in {"hybrid.fusion": "concat", "attention.head_dim": 16, "attention.v_head_dim": 16}.items():
        base = override(base, key, value)
    small, large = (match(override(base, "attention.n_heads", h), 8_000_000, "hybrid.ssm_inner") for h in (4, 8))
    assert small.value > large.value  # the SSM gives up width for the heads
    assert ratio(count_params(small.cfg)) > ratio(count_params(large.cfg))


def test_mqar_selection_and_test_draws_never_share_an_example(tmp_path):
    from ablate.tasks.mqar import MQARConfig, Segment, cached_segment, split_seed

    cfg = MQARConfig(vocab_size=32, cache_dir=str(tmp_path), train=(Segment(seq_len=16, n_pairs=2, n_examples=500),),
                     test=(Segment(seq_len=16, n_pairs=2, n_examples=500),))
    seg = cfg.test[0]
    draws = {split: cached_segment(seg, cfg, split_seed(cfg, split, 0))[0] for split in ("train", "test", "selection")}
    rows = {split: {tuple(r.tolist()) for r in x} for split, x in draws.items()}
    assert not rows["selection"] & rows["test"] and not rows["selection"] & rows["train"]
    assert not torch.equal(draws["selection"], draws["test"])


def test_lr_search_selects_on_the_selection_split_and_reports_on_test(tmp_path, capsys):
    path = write_sweep(tmp_path, variants=["llama", "mamba"], seeds=[0, 1],
                       lr_search={"values": [0.01, 1.0e-6], "seed": 0})
    assert launch(str(path), workers=1) == 0
    assert "learning rates chosen on the selection split (val/acc)" in capsys.readouterr().out
    results = tmp_path / "results"
    selection = [json.loads(p.read_text()) for p in (results / "lr_search" / "runs").glob("*/run.json")]
    assert len(selection) == 4 and {r["config"]["data"]["eval_split"] for r in selection} == {"selection"}
    assert {r["seed"] for r in selection} == {0}
    best = {}
    for r in selection:
        best.setdefault(r["variant"], {})[r["config"]["recipe"]["lr"]] = r["metrics"]["val/acc"]
    final = [json.loads(p.read_text()) for p in (results / "runs").glob("*/run.json")]
    assert len(final) == 4 and {r["seed"] for r in final} == {0, 1}
    for r in final:
        candidates = best[r["variant"]]
        assert r["config"]["data"]["eval_split"] == "test"
        assert r["config"]["recipe"]["lr"] == max(candidates, key=candidates.get)  # chosen on selection
        assert r["config"]["lr_selection"]["candidates"] == {str(k): v for k, v in sorted(candidates.items())}
    table = pd.read_csv(results / "table.csv")
    assert "grid/recipe.lr" in table.columns or "recipe.lr" in table.columns  # the chosen LR is a column
