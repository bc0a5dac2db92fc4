"""Where a step's GPU time goes: the kernels of one training step (ours and the peer of
benchmarks/peers.py, same shapes) and of one decoding step, by CUDA time, from torch.profiler.

    python -m benchmarks.gpu_profile train mamba 125M [--top 25]
    python -m benchmarks.gpu_profile decode mamba 350M --batch 1 [--context 8192]

Training: 3 warm-up steps, then 3 profiled; each kernel's time is per step. Decoding: the eager step
(every kernel it launches, their count and summed time: what a CUDA-graph replay cannot go below)
and the replayed step's wall time, uncompiled and compiled (GraphedStep(compile=True)).
Printed as tables, for benchmarks/NOTES.md.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks import peers


def kernel_table(prof, steps: int, top: int) -> tuple[str, float, int]:
    """(table of the top kernels by CUDA time per step, total ms per step, kernels per step)."""
    totals: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            entry = totals[evt.name[:90]]
            entry[0] += evt.device_time_total if hasattr(evt, "device_time_total") else evt.cuda_time_total
            entry[1] += 1
    total_us = sum(v[0] for v in totals.values())
    count = sum(v[1] for v in totals.values())
    lines = ["| kernel | ms/step | calls/step | share |", "|---|---:|---:|---:|"]
    for name, (us, n) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"| `{name}` | {us / 1e3 / steps:.3f} | {n / steps:g} | {us / total_us:.1%} |")
    return "\n".join(lines), total_us / 1e3 / steps, count // steps


def profile_steps(step, steps: int = 3, warmup: int = 3):
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    return prof


def cpu_table(prof, steps: int, top: int) -> str:
    lines = ["| op | self CPU ms/step | calls/step |", "|---|---:|---:|"]
    averages = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    for evt in averages:
        lines.append(f"| `{evt.key[:80]}` | {evt.self_cpu_time_total / 1e3 / steps:.3f} | {evt.count / steps:g} |")
    return "\n".join(lines)


def synchronizing_calls(step) -> list[str]:
    """Where one step makes the host wait for the GPU (torch's sync debug mode, as warnings)."""
    import warnings

    found = []
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" in str(w.message) and "prototype" not in str(w.message):
            found.append(f"{w.filename}:{w.lineno}: {str(w.message)[:120]}")
    return found


def train(name: str, size: str, batch: int, seq: int, top: int, only: tuple[str, ...] = ("ours", "peer")) -> None:
    from benchmarks.bench import core_model

    cfg = core_model(name, size)
    kw = None
    if not peers.skip_reason(peers.PAIRS[name]):
        kw = peers.peer_kwargs(name, cfg)
    builds = peers.training_builds(name, cfg, kw)
    if "peer" not in builds:
        print(f"peer: {peers.skip_reason(peers.PAIRS[name])}")
    sides = [(side, build) for side, build in builds.items() if side in only]
    for side, build in sides:
        peers.fresh_compiler()
        peers.free()
        model, forward = build()
        step = peers.training_step(model, forward, cfg.size.vocab_size, batch, seq)
        prof = profile_steps(step)
        table, ms, count = kernel_table(prof, 3, top)
        elapsed = peers.timed_median_ms(step, 10)  # CUDA events: kernels and the gaps between them
        print(f"\n### {side}: {name} {size} train bf16 B={batch} T={seq}: {ms:.2f} ms of kernels per step, "
              f"{count} kernels, {elapsed:.2f} ms per step between CUDA events (GPU idle {elapsed - ms:.2f} ms)"
              f"\n\n{table}")
        print(f"\nCPU time by op (per step, self):\n\n{cpu_table(prof, 3, top)}")
        syncs = synchronizing_calls(step)
        print(f"\nsynchronizing calls in one step: {len(syncs)}")
        for where in syncs[:10]:
            print(f"- {where}")
        del model, forward
        peers.free()


def decode(name: str, size: str, batch: int, context: int, top: int) -> None:
    from ablate.model import GraphedStep
    from benchmarks.bench import core_model

    cfg = core_model(name, size)
    peers.fresh_compiler()
    peers.free()
    model = peers.build_ours(cfg, "off").bfloat16().eval()
    prompt = torch.randint(0, cfg.size.vocab_size, (batch, context), device="cuda")
    with torch.no_grad():
        for compiled in (False, True):
            cache = model.new_cache(context + 64)
            nxt = model(prompt, cache, last_only=True).logits[:, -1].argmax(-1, keepdim=True)
            if not compiled:
                prof = profile_steps(lambda nxt=nxt, cache=cache: model(nxt, cache), steps=3, warmup=2)
                table, ms, count = kernel_table(prof, 3, top)
                print(f"\n### ours: {name} {size} eager decoding step B={batch} context={context}: "
                      f"{ms:.3f} ms of kernels per step, {count} kernels\n\n{table}")
            t0 = time.perf_counter()
            step = GraphedStep(model, cache, batch, compile=compiled)
            build_s = time.perf_counter() - t0
            for _ in range(3):
                step(nxt)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(32):
                step(nxt)
            torch.cuda.synchronize()
            ms = 1e3 * (time.perf_counter() - t0) / 32
            print(f"\nreplayed step, compile={compiled}: {ms:.3f} ms ({batch / ms * 1e3:.1f} tokens/s), "
                  f"build {build_s:.1f} s")
            del step, cache
            peers.free()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("train", "decode"))
    p.add_argument("variant")
    p.add_argument("size", choices=("125M", "350M"))
    p.add_argument("--batch", type=int, default=None, help="train: 8; decode: 1")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--context", type=int, default=8192)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--sides", default="ours,peer", help="train: ours, peer or both (comma list)")
    a = p.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    if a.what == "train":
        train(a.variant, a.size, a.batch or 8, a.seq, a.top, tuple(a.sides.split(",")))
    else:
        decode(a.variant, a.size, a.batch or 1, a.context, a.top)


if __name__ == "__main__":
    main()
