"""Malformed inputs, as a user would make them: every one exits non-zero with one message that
names the file (or option), the key and what is allowed; never a traceback, never accepted."""

from __future__ import annotations

import pytest
import torch

from ablate.cli import main

VARIANTS = {  # variant file text -> pieces the message must hold
    "unknown key": ("attention: {n_head: 4}", ["attention.n_head", "n_heads"]),
    "wrong type": ("size: {d_model: wide}", ["size.d_model", "'wide'", "int"]),
    "negative heads": ("attention: {n_heads: -2}", ["n_heads = -2", ">= 1"]),
    "zero heads": ("attention: {n_heads: 0}", ["n_heads = 0"]),
    "zero layers": ("size: {n_layers: 0}", ["n_layers = 0"]),
    "zero vocab": ("size: {vocab_size: 0}", ["vocab_size = 0"]),
    "heads do not divide the width": ("size: {d_model: 30}\nattention: {n_heads: 4}", ["head_dim=7", "RoPE"]),
    "kv heads do not divide": ("attention: {n_heads: 4, n_kv_heads: 3}", ["n_kv_heads=3"]),
    "no SSM state": ("layout: {pattern: [mamba]}\nmamba: {d_state: 0}", ["mamba", "d_state = 0"]),
    "zero expand": ("layout: {pattern: [mamba]}\nmamba: {expand: 0}", ["expand = 0"]),
    "dt range reversed": ("mamba: {dt_min: 0.5, dt_max: 0.1}", ["dt_max = 0.1", "dt_min = 0.5"]),
    "mamba2 head dim does not divide": ("layout: {pattern: [mamba2]}\nmamba2: {head_dim: 48}", ["mamba2.head_dim=48"]),
    "negative window": ("layout: {pattern: [attention], window: -1, global_layers: none}", ["layout.window = -1"]),
    "negative meta tokens": ("n_meta: -1", ["n_meta = -1"]),
    "unknown mixer": ("layout: {pattern: [attention, rwkv]}", ["rwkv", "mamba2"]),
    "pattern does not divide": ("size: {n_layers: 5}\nlayout: {pattern: [mamba, attention]}", ["n_layers = 5"]),
    "kv group names a missing layer": (
        "size: {n_layers: 2}\nlayout: {pattern: [attention], window: 4, global_layers: none, kv_groups: [[1, 5]]}",
        ["kv group [1, 5]", "out of range"]),
    "kv group with a global consumer": (
        "size: {n_layers: 4}\nlayout: {pattern: [attention], window: 8, global_layers: [1], kv_groups: [[0, 1]]}",
        ["kv group [0, 1]", "producer"]),
    "a list where a mapping belongs": ("size: [64, 2]", ["key 'size' must be a mapping"]),
    "empty file": ("", ["expected a mapping"]),
    "YAML syntax error": ("size: {d_model: 4", ["not valid YAML"]),
    "a key given twice": ("size: {d_model: 64}\nsize: {d_model: 128}", ["key 'size' is given twice"]),
    "YAML aliases": ("a: &x [1, 2]\nsize: *x", ["aliases"]),
    "unknown mixer section": ("mixers: {nope: {a: 1}}", ["mixers: unknown mixer 'nope'"]),
    "section of a mixer without one": ("mixers: {attention: {a: 1}}", ["mixers.attention", "no config section"]),
}


@pytest.mark.parametrize("case", VARIANTS, ids=list(VARIANTS))
def test_bad_variant_files(case, tmp_path, capsys):
    text, pieces = VARIANTS[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["variants", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and str(path) in err, err
    for piece in pieces:
        assert piece in err, (piece, err)


def test_a_file_that_is_not_text_or_too_large(tmp_path, capsys):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"size: {d_model: \xff\xfe}")
    assert main(["variants", str(binary)]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    huge = tmp_path / "huge.yaml"
    huge.write_text("description: '" + "x" * 2_000_000 + "'\n")
    assert main(["variants", str(huge)]) == 2
    err = capsys.readouterr().err
    assert "is not a config file" in err and len(err) < 500


SWEEP = """name: t
variants: [llama]
sets: {size.d_model: 32, size.n_layers: 2, attention.n_heads: 2}
recipe: {max_steps: 10, eval_every: 5, batch_size: 8}
"""
SWEEPS = {  # extra YAML appended to a valid sweep file -> pieces of the message
    "unknown task": ("tasks: [wiki]", ["tasks[0]", "'wiki'", "'mqar'"]),
    "empty seeds": ("seeds: []", ["key 'seeds' is empty"]),
    "duplicate seeds": ("seeds: [0, 0]", ["key 'seeds' lists [0] more than once"]),
    "impossible match": ("match: {target: 10, knob: mlp.hidden}", ["match", "tolerance"]),
    "unknown match knob": ("match: {target: 10000, knob: size.width}", ["match knob 'size.width'"]),
    "bad grid key": ("grid: {size.width: [1, 2]}", ["grid.size.width", "d_model"]),
    "task section wrong type": ("mqar: {vocab_size: many}", ["mqar.vocab_size", "int"]),
    "empty MQAR training set": ("mqar: {train: []}", ["mqar", "train is empty"]),
    "odd MQAR length": ("mqar: {test: [{seq_len: 15, n_pairs: 2}]}", ["test[0]: seq_len = 15", "even"]),
    "more pairs than keys": ("mqar: {vocab_size: 8, test: [{seq_len: 64, n_pairs: 8}]}",
                             ["mqar: train[0]: vocab_size = 8 has fewer than", "distinct keys"]),
    "unknown top-level key": ("variant: [llama]", ["unknown key 'variant'", "variants", "mqar"]),
    "sets that do not fit": ("grid: {attention.n_heads: [3]}", ["variant llama", "n_heads=3"]),
    "a grid value that is not a list": ("grid: {size.d_model: 64}", ["grid.size.d_model", "a non-empty list"]),
}


@pytest.mark.parametrize("case", SWEEPS, ids=list(SWEEPS))
def test_bad_sweep_files(case, tmp_path, capsys):
    extra, pieces = SWEEPS[case]
    path = tmp_path / "t.yaml"
    path.write_text(SWEEP + extra + f"\nresults: {tmp_path / 'results'}\n")
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "t.yaml" in err, err
    for piece in pieces:
        assert piece in err, (piece, err)
    assert not (tmp_path / "results").exists()  # nothing was started


def test_sweep_steps_that_are_not_a_multiple_of_evaluations(tmp_path, capsys):
    path = tmp_path / "t.yaml"
    path.write_text(SWEEP.replace("max_steps: 10", "max_steps: 12") + f"results: {tmp_path / 'results'}\n")
    assert main(["sweep", str(path)]) == 2
    assert "recipe.max_steps = 12 is not a multiple of recipe.eval_every = 5" in capsys.readouterr().err


SETS = {  # ablate train llama ... -> pieces of the message
    "typo in a model key": (["--set", "size.d_modl=64"], ["unknown key 'size.d_modl'", "d_model"]),
    "wrong value type": (["--set", "size.d_model=abc"], ["size.d_model", "'abc'", "int"]),
    "no equals sign": (["--set", "size.d_model"], ["expected key=value"]),
    "unknown section": (["--set", "sise.d_model=3"], ["unknown key 'sise.d_model'", "recipe.KEY"]),
    "another task's key": (["--set", "text.seq_len=5"], ["'text.seq_len' is for task 'text'"]),
    "recipe value": (["--set", "recipe.lr=fast"], ["recipe.lr", "float"]),
    "negative lr": (["--set", "recipe.lr=-1"], ["lr = -1"]),
    "steps not a multiple of evaluations": (["--set", "recipe.max_steps=150"], ["max_steps = 150", "eval_every"]),
    "empty MQAR test set": (["--set", "mqar.test=[]"], ["test is empty"]),
    "run name escapes the folder": (["--name", "../../evil"], ["a run name is one folder name"]),
    "heads that do not fit the kv heads": (["--set", "attention.n_heads=3"], ["n_heads=3", "n_kv_heads=2"]),
    "a window on an all-global model": (["--set", "layout.window=4"], ["layout.window is set", "global"]),
}


@pytest.mark.parametrize("case", SETS, ids=list(SETS))
def test_bad_train_options(case, tmp_path, capsys):
    options, pieces = SETS[case]
    assert main(["train", "llama", "--out", str(tmp_path / "runs"), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for piece in pieces:
        assert piece in err, (piece, err)
    assert not (tmp_path / "runs").exists()


def test_unknown_variant_and_task(tmp_path, capsys):
    assert main(["train", "lama", "--out", str(tmp_path)]) == 2
    assert "unknown variant 'lama'" in capsys.readouterr().err
    assert main(["train", "llama", "--task", "wiki"]) == 2
    assert "invalid choice: 'wiki'" in capsys.readouterr().err


def test_a_strategy_this_machine_cannot_run_is_a_clear_error(tmp_path, capsys):
    options = ["--set", "recipe.strategy=deepspeed", "--set", "recipe.accelerator=cpu", "--set", "recipe.devices=2",
               "--set", "size.d_model=32", "--set", "size.n_layers=2", "--set", "mqar.vocab_size=32",
               "--set", "mqar.train=[{seq_len: 16, n_pairs: 2, n_examples: 100}]",
               "--set", "mqar.test=[{seq_len: 16, n_pairs: 2, n_examples: 10}]",
               "--set", f"mqar.cache_dir={tmp_path / 'cache'}"]
    assert main(["train", "llama", "--out", str(tmp_path / "runs"), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: recipe (accelerator, devices, strategy, precision)") and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_gpu_accelerator_on_a_machine_without_one_is_a_clear_error(tmp_path, capsys):
    options = ["--set", "recipe.accelerator=gpu", "--set", "size.d_model=32", "--set", "size.n_layers=2",
               "--set", "mqar.vocab_size=32", "--set", "mqar.train=[{seq_len: 16, n_pairs: 2, n_examples: 100}]",
               "--set", "mqar.test=[{seq_len: 16, n_pairs: 2, n_examples: 10}]",
               "--set", f"mqar.cache_dir={tmp_path / 'cache'}"]
    assert main(["train", "llama", "--out", str(tmp_path / "runs"), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: recipe.accelerator = 'gpu'") and "allowed here: auto, cpu" in err, err


def test_a_results_path_that_cannot_be_a_directory_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file where the runs folder would go")
    assert main(["train", "llama", "--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert "cannot be written" in err and "Traceback" not in err


@pytest.mark.parametrize("option,piece", [("recipe.backend=triton", "recipe.backend = 'triton'"),
                                          ("recipe.token_budget=10", "training steps")])
def test_recipe_settings_found_wrong_at_run_time_are_clear_errors(option, piece, tmp_path, capsys):
    options = ["--set", option, "--set", "size.d_model=32", "--set", "size.n_layers=2", "--set", "mqar.vocab_size=32",
               "--set", "mqar.train=[{seq_len: 16, n_pairs: 2, n_examples: 100}]",
               "--set", "mqar.test=[{seq_len: 16, n_pairs: 2, n_examples: 10}]",
               "--set", f"mqar.cache_dir={tmp_path / 'cache'}"]
    assert main(["train", "llama", "--out", str(tmp_path / "runs"), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and piece in err and "Traceback" not in err, err


def test_a_table_of_a_folder_without_runs_is_an_error(tmp_path, capsys):
    assert main(["table", str(tmp_path / "nothing")]) == 2
    assert "no run records" in capsys.readouterr().err and not (tmp_path / "nothing").exists()


def test_a_bad_sets_key_is_named_by_its_section(tmp_path, capsys):
    """A model key in `sets` (the file's or a variant entry's) is named sets.KEY, one in `grid` grid.KEY."""
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nvariants: [llama, {name: mamba, sets: {mamba.d_stat: 4}}]\nsets: {size.width: 3}\n")
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "s.yaml" in err and "unknown key 'sets.size.width'" in err and "d_model" in err, err
    path.write_text("name: s\nvariants: [{name: mamba, sets: {mamba.d_stat: 4}}]\n")
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "variant mamba" in err and "unknown key 'sets.mamba.d_stat'" in err and "d_state" in err, err
