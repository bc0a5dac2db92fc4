"""The ablate_* lm-eval tasks (ablate/evaluate/lm_tasks): each loads offline from the local data files with
lm-eval's own prompt and metric fields, yields the item count its README states, and maps labels so that an
oracle model scores 1.0 and a random one scores chance; a missing file is a ConfigError that names it.

Skipped without lm-eval or without the data directory (found as the tasks find it: lm_tasks.data_dir()).
Converted files go to a temporary cache for this module, so the conversions run (once) here too.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from ablate.config import ConfigError  # noqa: E402
from ablate.evaluate.lm_tasks import (  # noqa: E402
    AVERAGED,
    GROUPS,
    HEADLINE,
    INCLUDE_PATH,
    METRICS,
    TASKS,
    cache_dir,
    data_dir,
    data_file,
)

DATA = data_dir()
if not DATA.is_dir():
    pytest.skip(f"no task data at {DATA} (set ABLATE_DATA_DIR)", allow_module_level=True)

import datasets  # noqa: E402
import lm_eval  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.tasks._yaml_loader import load_yaml  # noqa: E402

from ablate.evaluate.lm_tasks import local  # noqa: E402

LM_EVAL_TASKS = Path(lm_eval.__file__).resolve().parent / "tasks"

# the counts README.md states (checked against it below)
ITEMS = {
    "lambada_openai": 5153,
    "piqa": 1838,
    "arc_challenge": 1172,
    "arc_easy": 2376,
    "hellaswag": 10042,
    "winogrande": 1267,
    "social_iqa": 1954,
    "boolq": 3270,
    "openbookqa": 500,
    "squad_completion": 5928,
    "swde": 1135,
    "wikitext": 62,
}

# the lm-eval YAML each task copies its prompt from (the recall tasks are classes, checked separately)
LM_EVAL_YAML = {
    "lambada_openai": "lambada/lambada_openai.yaml",
    "piqa": "piqa/piqa.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "winogrande": "winogrande/default.yaml",
    "social_iqa": "siqa/siqa.yaml",
    "boolq": "super_glue/boolq/default.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "wikitext": "wikitext/wikitext.yaml",
}
PROMPT_FIELDS = ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "target_delimiter", "process_results")

MULTIPLE_CHOICE = ("piqa", "arc_challenge", "arc_easy", "hellaswag", "winogrande", "social_iqa", "boolq", "openbookqa")


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory):
    """No network, and a fresh conversion cache for this module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        patch.setenv("HF_HUB_OFFLINE", "1")
        # datasets reads the variable when first imported, which may have been before this fixture
        patch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
        patch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
        patch.setenv("ABLATE_CACHE_DIR", str(tmp_path_factory.mktemp("ablate_cache")))
        yield


@pytest.fixture(scope="module")
def manager(offline):
    return TaskManager(include_path=str(INCLUDE_PATH))


@pytest.fixture(scope="module")
def tasks(manager):
    """short name -> the built lm-eval Task."""
    loaded = manager.load(list(TASKS.values()))["tasks"]
    return {short: loaded[name] for short, name in TASKS.items()}


def gold_index(task, doc) -> int:
    """The gold choice of a multiple-choice doc, found as lm-eval's process_results finds it
    (lm_eval/api/task.py, ConfigurableTask.process_results)."""
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, str):
        gold = task.doc_to_choice(doc).index(gold)
    return gold


def gold_text(task, doc) -> str:
    """The gold choice as text (for WinoGrande, whose choices are the contexts: the gold context)."""
    return task.doc_to_choice(doc)[gold_index(task, doc)]


class OracleLM(LM):
    """Scores the gold choice highest (the gold read from the request's doc through its task), says the
    target is greedy, generates the gold value, and gives each wikitext page -1 nat per original word."""

    def __init__(self, tasks_by_name: dict):
        super().__init__()
        self.tasks_by_name = tasks_by_name
        self.generation_kwargs: dict[str, dict] = {}

    def loglikelihood(self, requests):
        results = []
        for request in requests:
            task = self.tasks_by_name[request.task_name]
            if task.OUTPUT_TYPE == "multiple_choice":
                is_gold = request.idx == gold_index(task, request.doc)
                results.append((0.0 if is_gold else -10.0, is_gold))
            else:  # loglikelihood of the target: greedy exactly when it is the doc's target
                is_target = request.args[1] == task.doc_to_target(request.doc)
                results.append((-1.0, is_target))
        return results

    def loglikelihood_rolling(self, requests):
        return [-float(len(re.split(r"\s+", request.doc["page"]))) for request in requests]

    def generate_until(self, requests):
        outputs = []
        for request in requests:
            task = self.tasks_by_name[request.task_name]
            context, kwargs = request.args[:2]
            assert context == task.doc_to_text(request.doc)
            self.generation_kwargs[request.task_name] = kwargs
            outputs.append(" " + task.doc_to_target(request.doc))
        return outputs


class RandomLM(LM):
    """Independent uniform random log-likelihoods (seeded): its accuracy is chance."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.rng = random.Random(seed)

    def loglikelihood(self, requests):
        return [(-10.0 * self.rng.random(), False) for _ in requests]

    # the random model is only run on multiple-choice tasks: a request of another kind is a test bug
    def loglikelihood_rolling(self, requests):
        raise AssertionError("RandomLM scores multiple-choice tasks only")

    def generate_until(self, requests):
        raise AssertionError("RandomLM scores multiple-choice tasks only")


def evaluate(model, manager, names, limit):
    return lm_eval.simple_evaluate(
        model=model, tasks=list(names), task_manager=manager, limit=limit, bootstrap_iters=0, log_samples=False
    )["results"]


# ----------------------------------------------------------------------------- names


def test_the_names_are_consistent():
    assert all(name.startswith("ablate_") for name in TASKS.values())
    assert set(HEADLINE) == set(TASKS) == set(GROUPS["all"]) == set(ITEMS)
    assert len(GROUPS["commonsense"]) == 9 and set(GROUPS["recall"]) == {"swde", "squad_completion"}
    assert set(AVERAGED["commonsense"]) == set(GROUPS["commonsense"]) - {"boolq", "openbookqa"}
    assert set(AVERAGED["recall"]) == set(GROUPS["recall"])
    for group, yaml_name in (("commonsense", "ablate_commonsense"), ("recall", "ablate_recall")):
        members = load_yaml(INCLUDE_PATH / f"{yaml_name}.yaml", resolve_func=False)["task"]
        assert members == [TASKS[short] for short in GROUPS[group]]


def test_the_data_dir_is_explicit_then_the_environment_then_beside_the_checkout(monkeypatch, tmp_path):
    import ablate

    monkeypatch.delenv("ABLATE_DATA_DIR", raising=False)
    assert data_dir() == Path(ablate.__file__).resolve().parents[1].parent / "shared" / "data"
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "env"))
    assert data_dir() == tmp_path / "env"
    assert data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.setenv("ABLATE_CACHE_DIR", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache" / "lm_eval"


def test_the_package_imports_without_lm_eval():
    # the CLI imports it (for INCLUDE_PATH and the names) on machines without lm-eval
    code = "import sys; sys.modules['lm_eval'] = None; import ablate.evaluate.lm_tasks as t; print(t.INCLUDE_PATH)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(INCLUDE_PATH)


# ----------------------------------------------------------------------------- 1. loading and counts


def test_every_task_loads_offline_with_the_stated_item_count(tasks):
    for short, task in tasks.items():
        assert task.task_name == TASKS[short]
        assert len(task.eval_docs) == ITEMS[short], short


def test_the_readme_states_the_same_counts():
    readme = (INCLUDE_PATH / "README.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip().strip("`"): line for line in readme.splitlines() if line.startswith("| `")}
    for short, count in ITEMS.items():
        assert f"| {count:,} |" in rows[short], short


def test_the_groups_hold_their_tasks(manager):
    loaded = manager.load(["ablate_commonsense", "ablate_recall"])
    assert loaded["group_map"]["ablate_commonsense"] == [TASKS[s] for s in GROUPS["commonsense"]]
    assert loaded["group_map"]["ablate_recall"] == [TASKS[s] for s in GROUPS["recall"]]


def test_conversions_are_cached_once(tasks):
    files = sorted(cache_dir().glob("*.jsonl"))
    assert len(files) == len(TASKS)
    before = {path: path.stat().st_mtime_ns for path in files}
    local.load_piqa()
    local.load_swde()
    assert {path: path.stat().st_mtime_ns for path in sorted(cache_dir().glob("*.jsonl"))} == before
    assert not list(cache_dir().glob(".*"))  # no temporary files left behind


# ----------------------------------------------------------------------------- 2. prompt fidelity


def comparable(value):
    """A YAML field as compared: functions by module, name and code (lm-eval and we may load the same
    module as two module objects), everything else as it is."""
    if callable(value):
        return (value.__module__, value.__qualname__, value.__code__.co_code)
    return value


@pytest.mark.parametrize("short", sorted(LM_EVAL_YAML))
def test_the_prompt_fields_are_lm_evals(short):
    ours = load_yaml(INCLUDE_PATH / f"{TASKS[short]}.yaml")
    theirs = load_yaml(LM_EVAL_TASKS / LM_EVAL_YAML[short])
    for field in PROMPT_FIELDS:
        default = " " if field == "target_delimiter" else None  # TaskConfig's default
        assert comparable(ours.get(field, default)) == comparable(theirs.get(field, default)), (short, field)
    assert ours["metric_list"] == theirs["metric_list"]
    assert ours["metadata"]["version"] == theirs["metadata"]["version"]


@pytest.mark.parametrize(("short", "module", "class_name"), [
    ("squad_completion", "lm_eval.tasks.squad_completion.task", "SQUADCompletion"),
    ("swde", "lm_eval.tasks.swde.task", "SWDE"),
])
def test_the_recall_tasks_are_lm_evals_classes_with_only_the_data_replaced(tasks, short, module, class_name):
    from ablate.evaluate.lm_tasks.local import LocalRecallData

    cls = type(tasks[short])
    assert cls.__mro__[1].__name__ == LocalRecallData.__name__
    parent = cls.__mro__[2]
    assert (parent.__module__, parent.__qualname__) == (module, class_name)
    # what ablate defines on top of lm-eval's class: data loading only (__init__ keeps the metadata for download)
    defined = set()
    for own in cls.__mro__[:2]:
        defined |= {name for name in own.__dict__ if not name.startswith("_")} | ({"__init__"} & set(own.__dict__))
    assert defined == {"__init__", "download", "load", "DATASET_PATH", "DATASET_NAME"}


# ----------------------------------------------------------------------------- 3. oracle and chance


def test_an_oracle_scores_one_on_every_task(manager, tasks):
    oracle = OracleLM({task.task_name: task for task in tasks.values()})
    results = evaluate(oracle, manager, TASKS.values(), limit=20)
    for short, name in TASKS.items():
        scores = results[name]
        assert f"{HEADLINE[short]},none" in scores, (short, scores)
        assert {f"{m},none" for m in METRICS[short]} <= set(scores), (short, scores)
        if short == "wikitext":  # -1 nat per word, words counted as lm-eval counts them: perplexity e
            assert scores["word_perplexity,none"] == pytest.approx(math.e)
        else:
            metrics = [key for key in scores if key.split(",")[0] in ("acc", "acc_norm", "contains")]
            assert metrics and all(scores[key] == 1.0 for key in metrics), (short, scores)
    for name in (TASKS["squad_completion"], TASKS["swde"]):
        assert oracle.generation_kwargs[name]["until"] == ["\n"]
        assert oracle.generation_kwargs[name]["max_gen_toks"] == 48


def test_a_random_model_scores_chance(manager, tasks):
    limit = 300
    results = evaluate(RandomLM(seed=0), manager, [TASKS[s] for s in MULTIPLE_CHOICE], limit=limit)
    for short in MULTIPLE_CHOICE:
        task = tasks[short]
        chances = [1 / len(task.doc_to_choice(doc)) for doc in list(task.eval_docs)[:limit]]
        mean = sum(chances) / limit
        half_width = 2.576 * math.sqrt(sum(p * (1 - p) for p in chances)) / limit  # 99%, normal approximation
        assert abs(results[TASKS[short]]["acc,none"] - mean) <= half_width, (short, results[TASKS[short]], mean)


# ----------------------------------------------------------------------------- labels against the raw files


def _jsonl(relative: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / relative).read_text(encoding="utf-8").splitlines() if line.strip()]


def _labels(relative: str) -> list[int]:
    return [int(line) for line in (DATA / relative).read_text(encoding="utf-8").split()]


def raw_gold_texts(short: str) -> list[str]:
    """Each item's gold answer read straight from the local files (an independent file where there is one)."""
    if short == "piqa":
        docs, labels = _jsonl("piqa/valid.jsonl"), _labels("piqa/valid-labels.lst")
        return [d[f"sol{y + 1}"] for d, y in zip(docs, labels, strict=True)]
    if short == "hellaswag":
        lines = gzip.open(DATA / "hellaswag/hellaswag_val_full.txt.gz", "rt", encoding="utf-8").read().split("\n")
        return [local.hellaswag_preprocess(lines[i + 2 + int(lines[i + 1])]) for i in range(0, len(lines) - 1, 6)]
    if short in ("arc_easy", "arc_challenge"):
        docs = _jsonl(f"arc/ARC-{short[4:].capitalize()}-Test.jsonl")
        return [next(c["text"] for c in d["question"]["choices"] if c["label"] == d["answerKey"]) for d in docs]
    if short == "winogrande":  # the original dev-labels.lst, not the MosaicML gold
        items, labels = _jsonl("winogrande/winogrande_mosaicml_icl.jsonl"), _labels("winogrande/dev-labels.lst")
        return [item["context_options"][y - 1] for item, y in zip(items, labels, strict=True)]
    if short == "social_iqa":
        docs, labels = _jsonl("siqa/dev.jsonl"), _labels("siqa/dev-labels.lst")
        return [d["answer" + "ABC"[y - 1]] for d, y in zip(docs, labels, strict=True)]
    if short == "openbookqa":  # the MosaicML copy, not the test.tsv the task reads
        return [d["choices"][d["gold"]] for d in _jsonl("openbookqa/openbook_qa_mosaicml_icl.jsonl")]
    if short == "boolq":
        return [{"true": "yes", "false": "no"}[d["label"]] for d in _jsonl("boolq/val.jsonl")]
    raise KeyError(short)


@pytest.mark.parametrize("short", MULTIPLE_CHOICE)
def test_every_gold_label_matches_the_raw_files(tasks, short):
    task = tasks[short]
    assert [gold_text(task, doc) for doc in task.eval_docs] == raw_gold_texts(short)


def test_lambada_targets_are_the_last_words(tasks):
    task = tasks["lambada_openai"]
    raw = _jsonl("lambada_openai/lambada_openai_mosaicml_icl.jsonl")
    assert [doc["text"] for doc in task.eval_docs] == [r["context"] + " " + r["continuation"] for r in raw]
    # lm-eval's templates split at the last space, which is where MosaicML split (its continuations have none;
    # a few hold newlines, "of\n\nPower", as the original text does). The templates are slow: 500 items
    pairs = [(task.doc_to_text(doc), task.doc_to_target(doc)) for doc in list(task.eval_docs)[:500]]
    assert pairs == [(r["context"], " " + r["continuation"]) for r in raw[:500]]


def test_every_recall_answer_is_in_its_prompt(tasks):
    for short in ("squad_completion", "swde"):
        task = tasks[short]
        assert all(task.doc_to_target(doc) in task.doc_to_text(doc) for doc in task.eval_docs), short


def test_wikitext_pages_are_the_articles(tasks):
    pages = [doc["page"] for doc in tasks["wikitext"].eval_docs]
    assert pages[0].startswith(" = Robert Boulter = \n")
    text = (DATA / "wikitext2_raw/wiki.test.raw").read_bytes().decode("utf-8").replace("\r\n", "\n")
    assert "".join(pages) == text
    assert not any(re.search(r"^ = [^=].* = $", page, re.M).start() for page in pages)  # each starts at its heading


# ----------------------------------------------------------------------------- 4. missing data


def test_a_missing_data_file_is_a_config_error_naming_it(offline, tmp_path):
    manager = TaskManager(include_path=str(INCLUDE_PATH), include_defaults=False, metadata={"data_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "piqa" / "valid.jsonl"))):
        manager.load([TASKS["piqa"]])
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "swde_book" / "swde_book_subset.tar.gz"))):
        manager.load([TASKS["swde"]])  # a class task: the metadata reaches its loader too


def test_swde_chars_must_be_a_positive_integer():
    for bad in (0, "1500", 1.5, True):
        with pytest.raises(ConfigError, match="swde_chars"):
            local.load_swde(swde_chars=bad)


def test_the_error_says_how_to_set_the_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="ABLATE_DATA_DIR") as error:
        data_file("siqa/dev-labels.lst")
    assert str(tmp_path / "siqa" / "dev-labels.lst") in str(error.value) and "data_dir" in str(error.value)


# ----------------------------------------------------------------------------- 5. WinoGrande round trip


def test_the_winogrande_conversion_round_trips_on_every_item():
    items = _jsonl("winogrande/winogrande_mosaicml_icl.jsonl")
    records = [local.winogrande_record(item) for item in items]
    assert all(local.winogrande_round_trips(item, record) for item, record in zip(items, records, strict=True))
    assert [int(r["answer"]) for r in records] == _labels("winogrande/dev-labels.lst")
    assert records[0] == {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
                          "option1": "Sarah", "option2": "Maria", "answer": "2"}
    # options are whole words, not the characters after a longest common prefix ("ed" / "lanket")
    assert all(r["sentence"][: r["sentence"].index("_")][-1:] in ("", " ") for r in records)
