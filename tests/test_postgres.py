"""Studies on a real PostgreSQL server (pgserver: PostgreSQL from pip, a Unix socket in a temporary
folder, nothing on the network): three workers run every point exactly once, a plain
postgresql:// URL works with the declared driver, and the password appears nowhere."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from ablate.sweep.grid import load_sweep
from ablate.sweep.launch import launch
from tests.helpers import write_sweep
from tests.test_sweep import kill_and_resume

pgserver = pytest.importorskip("pgserver", reason="needs pgserver (the dev extra) for a PostgreSQL server")
pytest.importorskip("psycopg", reason="needs psycopg (the postgres extra)")

PASSWORD = "s3cr3t-p@ss:w0rd"


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    server.psql("CREATE ROLE ablate LOGIN PASSWORD 's3cr3t-p@ss:w0rd';")
    server.psql("CREATE DATABASE studies OWNER ablate;")
    socket_dir = server.get_uri().split("host=")[1].split("&")[0]
    # the password's '@' and ':' are percent-encoded, as a URL requires
    yield f"postgresql://ablate:s3cr3t-p%40ss%3Aw0rd@/studies?host={socket_dir}", server
    server.cleanup()


def test_three_workers_on_postgresql_run_every_point_once_and_never_show_the_password(
        postgres_url, tmp_path, capsys):
    url, _ = postgres_url
    path = write_sweep(tmp_path, seeds=[0, 1, 2])  # 2 variants x 3 seeds
    assert launch(str(path), workers=3, storage_url=url) == 0
    out = capsys.readouterr()
    sweep = load_sweep(path)
    study = optuna.load_study(study_name="t", storage=url.replace("postgresql://", "postgresql+psycopg://"))
    trials = study.get_trials()
    assert sorted(t.user_attrs["point"] for t in trials) == sorted(sweep.runs)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    for point, _ in sweep.runs.values():
        assert json.loads((sweep.run_dir(point) / "run.json").read_text())["attempts"] == 1
    # the password (raw or encoded) in no output, result file, or study attribute
    secrets = (PASSWORD, "s3cr3t-p%40ss%3Aw0rd", "s3cr3t")
    texts = [out.out, out.err, json.dumps(study.user_attrs), json.dumps([t.user_attrs for t in trials])]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in sweep.results.rglob("*") if p.is_file()]
    assert not any(secret in text for secret in secrets for text in texts)
    assert "ablate:***@" in out.out


def test_a_killed_sweep_on_postgresql_resumes_and_completes(postgres_url, tmp_path):
    url, server = postgres_url
    server.psql("CREATE DATABASE killed OWNER ablate;")
    kill_and_resume(tmp_path, url.replace("/studies?", "/killed?"))


def test_three_workers_run_a_search_study_on_postgresql_exactly_n_trials(postgres_url, tmp_path):
    url, server = postgres_url
    server.psql("CREATE DATABASE search OWNER ablate;")
    url = url.replace("/studies?", "/search?")
    path = write_sweep(tmp_path, name="s", variants=["llama"], seeds=[0], n_trials=6,
                       search={"recipe.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
                               "mlp.hidden": {"type": "int", "low": 32, "high": 96, "step": 8}},
                       objectives=[{"metric": "val/acc"}, {"metric": "tokens_per_s"}],
                       sampler={"name": "nsga2", "seed": 0, "population_size": 4})
    assert launch(str(path), workers=3, storage_url=url) == 0
    study = optuna.load_study(study_name="s", storage=url.replace("postgresql://", "postgresql+psycopg://"))
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE and len(t.values) == 2 for t in trials)
    assert sorted(t.user_attrs["slot"] for t in trials) == list(range(6))
    runs = [json.loads(p.read_text()) for p in (load_sweep(path).results / "runs").glob("*/run.json")]
    assert all(r["attempts"] == 1 for r in runs)  # a repeated proposal reuses its run, never trains it twice
    assert {json.dumps(t.params, sort_keys=True) for t in trials} == \
        {json.dumps({"mlp.hidden": r["config"]["model"]["mlp"]["hidden"], "recipe.lr": r["config"]["recipe"]["lr"]},
                    sort_keys=True) for r in runs}
