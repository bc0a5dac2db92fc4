"""CLI smoke tests (in-process)."""

from __future__ import annotations

from ablate.cli import main


def test_variants_table(capsys):
    assert main(["variants", "--seq-len", "8000"]) == 0
    out = capsys.readouterr().out
    assert "hymba-1.5b" in out and "1,522.80" in out and "262.14" in out


def test_variants_plan(capsys):
    assert main(["variants", "hymba-1.5b", "--plan"]) == 0
    out = capsys.readouterr().out
    assert " 15  hybrid     global" in out and "kv:consumer(group 7)" in out


def test_unknown_variant_is_a_clear_error(capsys):
    assert main(["variants", "nope"]) == 2
    assert "unknown variant 'nope'" in capsys.readouterr().err


def test_keys_lists_help(capsys):
    assert main(["keys"]) == 0
    assert "hybrid.fusion" in capsys.readouterr().out


def test_sweep_dry_run_prints_every_plan_and_trains_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default sweep's results would go to results/default here
    assert main(["sweep", "default", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("non-embedding,") == 9 and "size.d_model = 37" in out and ", lr 0.01" in out
    assert not (tmp_path / "results").exists()
    # the total is counted at the task's vocabulary (MQAR's 256), as the run builds the model
    from ablate.sizing import count_params
    from ablate.sweep.grid import load_sweep
    from ablate.sweep.launch import task_vocab

    _, cfg = load_sweep("default").runs["llama|mqar|s0"]
    assert task_vocab(cfg).size.vocab_size == 256
    assert f"llama|mqar|s0: {count_params(task_vocab(cfg)).total / 1e6:,.3f}M parameters" in out
    # the faithful scale-down: every roadmap window row ends in a global layer (Samba, a baseline,
    # has sliding windows only, as in its paper), and every KV producer is a window layer right
    # after a global one
    for row in out.split("\n\n")[1:]:
        layers = [line.split() for line in row.strip().splitlines()[1:]]
        if any("window=16" in line for line in layers) and not row.startswith("samba|"):
            assert "window=16" not in layers[-1] and layers[-1][2] == "global", row
        for i, line in enumerate(layers):
            if any(part.startswith("kv:producer") for part in line):
                assert "window=16" in line and layers[i - 1][2] == "global", row
    assert out.count("kv:producer") == 2  # D and E
