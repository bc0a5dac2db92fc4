"""The benchmark script's options (benchmarks/bench.py), checked on a CPU machine too."""

from __future__ import annotations

from benchmarks.bench import main


def test_bench_options_are_checked_before_any_gpu_work(capsys):
    # errors name the option and what is allowed, on a CPU machine too (no GPU needed to say so)
    assert main(["--sections", "scan,nope"]) == 2
    assert "--sections: unknown ['nope']" in capsys.readouterr().err
    assert main(["--variants", "llama,nope"]) == 2
    err = capsys.readouterr().err
    assert "--variants: unknown ['nope']" in err and "roadmap-b-parallel" in err


def test_cpu_section_runs_without_a_gpu(tmp_path):
    # a training step per variant of the default sweep, tiny: one timed step at batch 4, 16 tokens
    from benchmarks.bench import run

    out = tmp_path / "RESULTS.md"
    rows = run(["cpu"], out, "test", cpu_steps=1, cpu_warmup=0, batch=4, seq=16)
    from ablate.sweep.grid import load_sweep

    assert [r["impl"] for r in rows] == load_sweep("sweeps/default.yaml").labels
    assert rows[0]["impl"] == "llama" and rows[0]["vs_attention"] == 1.0
    assert all(r["tokens_per_s"] > 0 and r["section"] == "cpu" for r in rows)
    text = out.read_text()
    assert "### cpu" in text and "command: `test`" in text and "CPU" in text
    assert out.with_suffix(".jsonl").read_text().count("\n") == len(rows)


def test_gpu_sections_still_need_a_gpu(tmp_path):
    import pytest
    import torch

    from benchmarks.bench import run

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="need a CUDA GPU"):
        run(["cpu", "scan"], tmp_path / "R.md", "test")
