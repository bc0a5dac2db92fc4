"""lm-eval end to end on the CPU: `ablate eval` on a small text-trained run over every local task
(--limit), the record and table it leaves, `ablate lm-eval` (lm-eval's own CLI), and the lm_eval
evaluation inside a sweep, where a failed evaluation is redone on the next start without
retraining. Needs lm-eval and ../shared/data."""

from __future__ import annotations

import json

import pytest
import yaml

pytest.importorskip("lm_eval")

from ablate.cli import main  # noqa: E402
from ablate.evaluate.lm_tasks import GROUPS, HEADLINE, METRICS, data_dir  # noqa: E402
from ablate.train.config import run_config  # noqa: E402
from ablate.train.run import train  # noqa: E402
from tests.helpers import TINY_MODEL, tiny_mqar  # noqa: E402

DATA = data_dir()
if not (DATA / "tinyshakespeare" / "input.txt").exists():
    pytest.skip(f"no benchmark data at {DATA}", allow_module_level=True)

TEXT = {"train": [str(DATA / "tinyshakespeare" / "input.txt")], "val": [str(DATA / "wikitext2" / "valid.txt")],
        "vocab_size": 512, "seq_len": 64, "max_val_tokens": 4000}
RECIPE = {"max_steps": 20, "eval_every": 10, "batch_size": 8, "warmup_steps": 2}


def text_sets(tmp) -> list[str]:
    return TINY_MODEL + [f"text.{k}={json.dumps(v)}" for k, v in TEXT.items()] + [
        f"text.cache_dir={tmp / 'cache'}"] + [f"recipe.{k}={v}" for k, v in RECIPE.items()]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("text")
    run_dir = tmp / "results" / "runs" / "llama-text-s0"
    # llama: its decoding steps are the fastest on a CPU (the adapter's tests cover every kind of mixer)
    train(run_config("llama", "text", text_sets(tmp)), run_dir)
    return run_dir


def test_ablate_eval_every_task_records_metrics_and_table(text_run, capsys):
    assert main(["eval", str(text_run), "--tasks", "all", "--limit", "50", "--batch-size", "8"]) == 0
    printed = capsys.readouterr().out
    assert "commonsense avg" in printed and "lm-eval 0.4.13" in printed
    record = json.loads((text_run / "run.json").read_text())
    assert record["metrics"]["val/loss"] > 0  # training metrics kept
    for task in GROUPS["all"]:
        for metric in METRICS[task]:
            value = record["metrics"][f"eval/lm_eval/{task}/{metric}"]
            assert value == value, (task, metric)  # not NaN
    for avg in ("commonsense_avg", "recall_avg"):
        assert 0.0 <= record["metrics"][f"eval/lm_eval/{avg}"] <= 1.0
    info = record["evaluations"]["lm_eval"]
    assert info["lm_eval_version"] == "0.4.13" and info["limit"] == 50
    assert info["items"] == {task: 50 for task in GROUPS["all"]}
    specs = {m["name"]: m for m in record["metric_specs"]}
    assert specs["eval/lm_eval/wikitext/word_perplexity"]["direction"] == "minimize"
    assert specs["eval/lm_eval/piqa/acc_norm"]["table"] and not specs["eval/lm_eval/piqa/acc"]["table"]
    results = json.loads((text_run / "eval" / "results.json").read_text())
    assert set(results["results"]) >= {f"ablate_{t}" for t in GROUPS["all"]}
    assert (text_run / "eval" / "samples_ablate_swde.jsonl").stat().st_size > 0

    assert main(["table", str(text_run.parent.parent)]) == 0
    table = (text_run.parent.parent / "table.md").read_text()
    for column in ("commonsense avg", "recall avg", f"piqa {HEADLINE['piqa']}", "swde contains"):
        assert column in table
    assert "piqa acc |" not in table  # the non-headline metrics are in table.csv only
    assert "limited to 50 items" in table


def test_lm_evals_own_cli_runs_the_ablate_model(text_run, tmp_path):
    out = tmp_path / "out"
    assert main(["lm-eval", "--model", "ablate", "--model_args", f"run_dir={text_run}", "--tasks",
                 "ablate_piqa,ablate_lambada_openai", "--limit", "8", "--output_path", str(out)]) == 0
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    assert results["results"]["ablate_piqa"]["acc,none"] >= 0.0
    assert results["config"]["model"] == "ablate"


def test_eval_of_a_run_without_a_tokenizer_is_a_clear_error(tmp_path, capsys):
    run_dir = tmp_path / "mqar"
    train(tiny_mqar(tmp_path, steps=10, every=5), run_dir)
    assert main(["eval", str(run_dir), "--tasks", "piqa", "--limit", "2"]) == 2
    assert "no tokenizer" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nowhere"), "--tasks", "piqa"]) == 2
    assert main(["eval", str(run_dir), "--tasks", "nope"]) == 2
    assert main(["eval", str(run_dir), "--tasks", "piqa", "--limit", "0"]) == 2
    assert main(["eval", str(run_dir), "--tasks", "piqa", "--batch-size", "-1"]) == 2


def test_a_second_evaluation_replaces_the_first(text_run):
    assert main(["eval", str(text_run), "--tasks", "recall", "--limit", "3"]) == 0
    assert main(["eval", str(text_run), "--tasks", "ablate_piqa", "--limit", "2"]) == 0  # lm-eval's name
    record = json.loads((text_run / "run.json").read_text())
    evaluated = {k for k in record["metrics"] if k.startswith("eval/lm_eval/")}
    assert evaluated == {"eval/lm_eval/piqa/acc", "eval/lm_eval/piqa/acc_norm"}
    assert [p.name for p in (text_run / "eval").glob("samples_*")] == ["samples_ablate_piqa.jsonl"]
    summary = (text_run / "eval" / "summary.json").read_text()
    assert "NaN" not in summary  # strict JSON


def test_evaluation_inside_a_sweep_is_redone_after_a_failure_without_retraining(tmp_path, capsys):
    def sweep(data: str):
        model = {key: yaml.safe_load(value) for key, value in (s.split("=", 1) for s in TINY_MODEL)}
        doc = {"name": "lm", "variants": ["llama"], "tasks": ["text"], "seeds": [0],
               "results": str(tmp_path / "results"), "sets": model,
               "recipe": RECIPE, "text": {**TEXT, "cache_dir": str(tmp_path / "cache")},
               "evaluate": {"lm_eval": {"tasks": ["recall", "piqa"], "limit": 4, "data_dir": data}}}
        path = tmp_path / "lm.yaml"
        path.write_text(yaml.safe_dump(doc))
        return main(["sweep", str(path)])

    run_dir = tmp_path / "results" / "runs" / "llama-text-s0"
    assert sweep(str(tmp_path / "no-data")) == 1  # no data directory: the run fails before training
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()
    (tmp_path / "empty").mkdir()
    assert sweep(str(tmp_path / "empty")) == 1  # its files are missing: the evaluation fails after training
    failed = json.loads((run_dir / "run.json").read_text())
    assert failed["status"] == "failed" and "not found" in failed["reason"]
    assert (run_dir / "checkpoints" / "last.ckpt").exists()

    assert sweep(str(DATA)) == 0  # data_dir is not part of the run's identity: the same run, evaluated now
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished" and record["attempts"] == 2  # attempt 1 was the one that trained
    assert record["versions"]["lm_eval"] == "0.4.13"
    assert record["tokens_per_s"] == failed["tokens_per_s"] > 0  # measured by the attempt that trained
    assert record["steps"] == RECIPE["max_steps"]
    import pandas as pd

    second = pd.read_csv(run_dir / "logs" / "attempt2" / "metrics.csv")  # the second start trained no step
    assert "train/loss" not in second or second["train/loss"].isna().all()
    assert record["metrics"]["eval/lm_eval/recall_avg"] >= 0.0
    assert "eval/lm_eval/commonsense_avg" not in record["metrics"]  # not every task of that average ran
    assert "recall avg" in (tmp_path / "results" / "table.md").read_text()
