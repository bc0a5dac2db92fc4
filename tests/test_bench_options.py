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


def test_the_profile_section_adds_a_step_up_by_kind_of_kernel(monkeypatch, tmp_path):
    # the section's reading of a profile, on the CPU (its ops stand in for the GPU's kernels): a tiny
    # parallel hybrid's step, grouped by kind; the kinds add up to every op's self time
    import benchmarks.bench as bench

    monkeypatch.setitem(bench.SIZES, "tiny", {"size.d_model": 32, "size.n_layers": 2, "attention.n_heads": 2,
                                             "attention.n_kv_heads": 2, "mlp.hidden": 64})
    rows: list[dict] = []
    bench.bench_profile(rows, sizes=("tiny",), variants=("roadmap-b-parallel",), compile_modes=("off",), batch=2,
                        seq=32, profile_steps=2, profile_top=5, device="cpu")
    kinds = [r for r in rows if not r["kind"].startswith("kernel")]
    assert {"matmul", "optimizer"} <= {r["kind"] for r in kinds}
    assert abs(sum(r["share"] for r in kinds) - 1) < 1e-6 and all(r["step_ms"] > 0 for r in rows)
    assert len(rows) - len(kinds) == 5 and rows[-1]["case"] == "tiny bf16 B=2 T=32 compile off"
    bench.write_results(rows, tmp_path / "R.md", "test")
    assert "### profile" in (tmp_path / "R.md").read_text()
    assert bench.kernel_kind("sm90_xmma_gemm_bf16bf16_bf16f32") == "matmul"
    assert bench.kernel_kind("_chunk_state_kernel") == "scan / ssd"
    assert bench.kernel_kind("triton_poi_fused_add_mul_0") == "fused (inductor)"
