"""`ablate bench`: GPU timings, each the median of repeated timed runs after warm-up
(``triton.testing.do_bench``, CUDA events), appended to a results file with the exact command and
the GPU it ran on.

Sections:
  scan       Mamba-1 selective scan fwd+bwd: ours (Triton) vs mamba-ssm CUDA vs the torch loop
  attention  global causal SDPA vs flex (window + always-visible meta prefix) vs masked SDPA
  layer      our parallel hybrid layer vs the same layer assembled from mamba-ssm Mamba + SDPA
  model      training tokens/s and MFU of every core variant at ~125M and ~350M, bf16, seq 2048
  inference  prefill and decode tokens/s at 8k context; measured vs analytic cache bytes
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

SECTIONS = ("scan", "attention", "layer", "model", "inference")
# bf16 dense peak used for MFU (H100 SXM datasheet); H200 has the same compute peak.
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12}


def median_ms(fn, warmup: int = 25, rep: int = 100) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def fwd_bwd(fn, inputs):
    """A closure running fn forward and backward with a fixed upstream gradient."""
    out = fn()
    grad = torch.randn_like(out[0] if isinstance(out, tuple) else out)

    def step():
        for t in inputs:
            t.grad = None
        y = fn()
        (y[0] if isinstance(y, tuple) else y).backward(grad)

    return step


# ----------------------------------------------------------------------------- scan


def scan_case(B, D, T, N, dtype=torch.bfloat16):
    dev = "cuda"
    g = dict(device=dev, dtype=dtype, requires_grad=True)
    return dict(
        u=torch.randn(B, D, T, **g), delta=(0.5 * torch.randn(B, D, T, device=dev)).to(dtype).requires_grad_(),
        A=(-torch.rand(D, N, device=dev) * 4 - 0.05).requires_grad_(),
        B=torch.randn(B, N, T, **g), C=torch.randn(B, N, T, **g),
        D=torch.randn(D, device=dev, requires_grad=True), z=torch.randn(B, D, T, **g),
        delta_bias=(0.1 * torch.randn(D, device=dev)).requires_grad_(),
    )


def bench_scan(rows: list[dict]) -> None:
    from ablate.ops.scan import loop
    from ablate.ops.scan import triton as tscan

    impls = {"ours (triton)": tscan.selective_scan, "torch loop (CPU path)": loop.selective_scan}
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        impls["mamba-ssm CUDA"] = selective_scan_fn
    except ImportError as err:
        print(f"mamba-ssm not importable ({err}); its rows are skipped", file=sys.stderr)
    for T in (2048, 8192):
        x = scan_case(8, 1536, T, 16)
        for name, fn in impls.items():
            slow = name.startswith("torch")
            if slow and T > 2048:
                continue

            def call(fn=fn):
                return fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)

            fwd = median_ms(call, 2 if slow else 25, 5 if slow else 100)
            both = median_ms(fwd_bwd(call, list(x.values())), 2 if slow else 25, 5 if slow else 100)
            rows.append({"section": "scan", "case": f"B=8 D=1536 L={T} N=16 bf16", "impl": name,
                         "fwd_ms": fwd, "fwd_bwd_ms": both})
            print(rows[-1], flush=True)
        del x
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- results file


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"


def write_results(rows: list[dict], out: Path, command: str) -> None:
    import pandas as pd

    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = [f"\n## {stamp} — {gpu_name()}\n", f"command: `{command}`  ",
            f"torch {torch.__version__}, Python {platform.python_version()}\n"]
    frame = pd.DataFrame(rows)
    for section, part in frame.groupby("section", sort=False):
        part = part.dropna(axis=1, how="all").drop(columns="section")
        text.append(f"\n### {section}\n\n" + part.to_markdown(index=False, floatfmt=".3f") + "\n")
    with out.open("a") as f:
        f.write("".join(text))
    with out.with_suffix(".jsonl").open("a") as f:
        for row in rows:
            f.write(json.dumps({"time": stamp, "gpu": gpu_name(), "command": command, **row}) + "\n")


def run(sections: list[str], out: Path) -> list[dict]:
    if not torch.cuda.is_available():
        raise SystemExit("ablate bench needs a CUDA GPU")
    rows: list[dict] = []
    for section in sections:
        globals()[f"bench_{section}"](rows)
    write_results(rows, out, "ablate bench " + " ".join(sys.argv[2:]))
    return rows

