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
