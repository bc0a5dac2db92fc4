"""`python -m benchmarks.bench` (`make bench`): GPU timings, each the median of repeated timed runs after warm-up
(``triton.testing.do_bench``, CUDA events), appended to a results file with the exact command and
the GPU it ran on.

Sections:
  scan       Mamba-1 selective scan fwd+bwd: ours (Triton) vs mamba-ssm CUDA vs the torch loop
  conv       causal depthwise conv + SiLU fwd+bwd: ours (Triton) vs torch F.conv1d vs causal-conv1d
  ssd        Mamba-2 SSD forward with a carried state (prefill): ours (Triton chunked kernels, and the
             compiled torch chunked path) vs mamba-ssm's mamba_chunk_scan_combined, 350M shapes
  attention  global causal SDPA vs flex (window + always-visible meta prefix) vs masked SDPA
  layer      our parallel hybrid layer vs the same layer assembled from mamba-ssm Mamba + SDPA
  model      training tokens/s and MFU of every core variant at ~125M and ~350M, bf16, seq 2048
  inference  prefill and decode tokens/s at 8k context; measured vs analytic cache bytes
  profile    (not in the default list) where the model section's training step spends its time: its
             kernels under torch.profiler grouped by kind (matmul, attention, scan, conv, norm, fused,
             elementwise, optimizer), ms per step and share, and the largest kernels by name, for
             each of --sizes x --variants x --compile (the MFU target's case: --sizes 350M
             --variants roadmap-b-parallel)
  peers      (not in the default list; transformers / mamba-ssm optional) ours vs the stack a user would
             pick instead, same shapes, same process: llama vs HF LlamaForCausalLM (sdpa, compiled), mamba
             / mamba2 / roadmap-a-sequential vs mamba-ssm MambaLMHeadModel; training tokens/s, memory,
             parameters and the ratio at 125M and 350M, and decoding tokens/s at 8k context, batch 1 and
             64 against their own generate (benchmarks/peers.py; on the GPU machine benchmarks/gpu_peers.sh)
  cpu        (no GPU needed; not in the default list) one training step (fwd+bwd+AdamW, the recipe's
             optimizer) of every variant of sweeps/default.yaml on one CPU thread, tokens/s beside
             the attention model's: the CPU path the default study trains on
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import torch

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


def bench_scan(rows: list[dict], **_) -> None:
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

            def call(fn=fn, x=x):
                return fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)

            fwd = median_ms(call, 2 if slow else 25, 5 if slow else 100)
            both = median_ms(fwd_bwd(call, list(x.values())), 2 if slow else 25, 5 if slow else 100)
            rows.append({"section": "scan", "case": f"B=8 D=1536 L={T} N=16 bf16", "impl": name,
                         "fwd_ms": fwd, "fwd_bwd_ms": both})
            print(rows[-1], flush=True)
        del x
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- conv


def bench_conv(rows: list[dict], **_) -> None:
    from ablate.ops.conv1d import reference
    from ablate.ops.conv1d import triton as tconv

    B, C, T, K = 8, 1536, 2048, 4
    # as the Mamba mixer passes it: a channels-contiguous view of the token-major projection
    x = torch.randn(B, T, C, device="cuda", dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
    w = torch.randn(C, K, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    bias = torch.randn(C, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    impls = {"ours (triton)": tconv.causal_conv1d, "torch F.conv1d": reference.causal_conv1d}
    try:
        from causal_conv1d import causal_conv1d_fn

        impls["causal-conv1d CUDA"] = lambda x, w, b, silu: causal_conv1d_fn(x, w, b, activation="silu")
    except ImportError as err:
        print(f"causal-conv1d not importable ({err}); its row is skipped", file=sys.stderr)
    for name, fn in impls.items():
        def call(fn=fn):
            return fn(x, w, bias, True)

        rows.append({"section": "conv", "case": f"B={B} C={C} T={T} K={K} bf16, SiLU", "impl": name,
                     "fwd_ms": median_ms(call), "fwd_bwd_ms": median_ms(fwd_bwd(call, [x, w, bias]))})
        print(rows[-1], flush=True)


def bench_ssd(rows: list[dict], **_) -> None:
    """Prefill shapes of the 350M Mamba-2 (d_inner 1536: H=48 heads of P=32, one B/C group, N=64), bf16, forward
    with an initial state and the final state returned, as a cached prefill runs it."""
    from ablate.ops.ssd import chunked
    from ablate.ops.ssd import triton as tssd

    impls = {"ours (triton chunked)": tssd.ssd, "ours (torch chunked, compiled)": torch.compile(chunked.ssd)}
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

        impls["mamba-ssm mamba_chunk_scan_combined"] = (
            lambda x, dt, A, B, C, D, initial_state, return_final_state: mamba_chunk_scan_combined(
                x, dt, A, B, C, 256, D=D, initial_states=initial_state, return_final_states=True))
    except ImportError as err:
        print(f"mamba-ssm not importable ({err}); its row is skipped", file=sys.stderr)
    for batch, T in ((1, 8192), (8, 2048)):
        args = ssd_case(batch, T)
        y_ref = None
        for name, fn in impls.items():
            def call(fn=fn, args=args):
                return fn(**args, return_final_state=True)

            with torch.no_grad():
                y = call()[0].float()
                y_ref = y if y_ref is None else y_ref
                err = ((y - y_ref).norm() / y_ref.norm()).item()
                ms = median_ms(call)
            rows.append({"section": "ssd", "case": f"B={batch} T={T} H=48 P=32 N=64 bf16, fwd + state", "impl": name,
                         "fwd_ms": ms, "tokens_per_s": batch * T / ms * 1e3, "rel_err_vs_first": err})
            print(rows[-1], flush=True)
        del args
        torch.cuda.empty_cache()


def ssd_case(batch: int, T: int, H: int = 48, P: int = 32, N: int = 64) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    return dict(x=torch.randn(batch, T, H, P, generator=g, device="cuda").to(**bf16),
                dt=(0.01 + 0.1 * torch.rand(batch, T, H, generator=g, device="cuda")).to(**bf16),
                A=-torch.rand(H, generator=g, device="cuda") - 0.5,
                B=torch.randn(batch, T, 1, N, generator=g, device="cuda").to(**bf16),
                C=torch.randn(batch, T, 1, N, generator=g, device="cuda").to(**bf16),
                D=torch.randn(H, generator=g, device="cuda"),
                initial_state=torch.randn(batch, H, P, N, generator=g, device="cuda"))


# ----------------------------------------------------------------------------- attention


def bench_attention(rows: list[dict], **_) -> None:
    from ablate.ops import attention as attn

    B, H, Hkv, T, D, meta, window = 8, 16, 4, 2048 + 128, 64, 128, 1024
    q = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, Hkv, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, Hkv, T, 2 * D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    pos = torch.arange(T, device="cuda")
    cases = {
        "global causal, SDPA": ("sdpa", None),
        "window 1024 + 128 meta, flex (ours)": ("flex", window),
        "window 1024 + 128 meta, SDPA + dense mask": ("sdpa", window),
    }
    for name, (impl, w) in cases.items():
        def call(impl=impl, w=w):
            return attn.attention(q, k, v, pos, pos, w, meta, impl=impl)

        rows.append({"section": "attention", "case": f"B={B} H={H} Hkv={Hkv} T={T} D={D} Dv={2 * D} bf16",
                     "impl": name, "fwd_ms": median_ms(call), "fwd_bwd_ms": median_ms(fwd_bwd(call, [q, k, v]))})
        print(rows[-1], flush=True)


# ----------------------------------------------------------------------------- layer


class AssembledHybrid(torch.nn.Module):
    """The parallel hybrid layer built from parts: q/k/v projection + RoPE + attention (SDPA
    causal, or flex for a window) and mamba-ssm's Mamba module on the same input, each output
    RMS-normed, averaged. (mamba-ssm's Mamba has its own in/out projections.)"""

    def __init__(self, d, n_heads, n_kv, d_state, window, n_meta):
        super().__init__()
        from mamba_ssm import Mamba

        from ablate.layers import RMSNorm

        self.h, self.kv, self.hd, self.window, self.n_meta = n_heads, n_kv, d // n_heads, window, n_meta
        self.qkv = torch.nn.Linear(d, (n_heads + 2 * n_kv) * self.hd, bias=False)
        self.o = torch.nn.Linear(n_heads * self.hd, d, bias=False)
        self.mamba = Mamba(d_model=d, d_state=d_state, d_conv=4, expand=2)
        self.n1, self.n2 = RMSNorm(d), RMSNorm(d)

    def forward(self, x):
        from ablate.ops import attention as attn
        from ablate.ops.rope.reference import rope  # the GPU path resolves RoPE to it

        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.h * self.hd, self.kv * self.hd, self.kv * self.hd], -1)
        pos = torch.arange(T, device=x.device)
        q, k = (rope(t.unflatten(-1, (-1, self.hd)).transpose(1, 2), pos, 1e4) for t in (q, k))
        v = v.unflatten(-1, (-1, self.hd)).transpose(1, 2)
        a = attn.attention(q, k, v, pos, pos, self.window, self.n_meta, impl="flex" if self.window else "sdpa")
        a = self.o(a.transpose(1, 2).flatten(2))
        return (self.n1(a) + self.n2(self.mamba(x))) / 2


def bench_layer(rows: list[dict], **_) -> None:
    from ablate.config import ModelConfig, override
    from ablate.mixers.base import Context, LayerSpec
    from ablate.mixers.hybrid import Hybrid
    from ablate.ops.backends import resolve

    d, H, kv, B, T, meta = 768, 12, 4, 8, 2048 + 128, 128
    cfg = ModelConfig()
    for key, value in {"size.d_model": d, "attention.n_heads": H, "attention.n_kv_heads": kv, "mamba.d_state": 16,
                       "n_meta": meta}.items():
        cfg = override(cfg, key, value)
    x = torch.randn(B, T, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    pos = torch.arange(T, device="cuda")
    for window in (None, 1024):
        ours = Hybrid(cfg, LayerSpec(0, "hybrid", window=window), resolve("auto", "cuda")).cuda().bfloat16()
        # the same layer with mamba-ssm's scan: separates the layer's design from the scan kernel
        ours_cuda = Hybrid(cfg, LayerSpec(0, "hybrid", window=window), resolve("cuda", "cuda")).cuda().bfloat16()
        # and with torch's conv, which inductor lowers itself (ours is called as it is: a graph break)
        torch_conv = dataclasses.replace(resolve("auto", "cuda"), conv1d="torch")
        ours_tconv = Hybrid(cfg, LayerSpec(0, "hybrid", window=window), torch_conv).cuda().bfloat16()
        ours_tconv.load_state_dict(ours.state_dict())
        assembled = AssembledHybrid(d, H, kv, 16, window, meta).cuda().bfloat16()
        label = "global" if window is None else f"window {window}"
        compiled, compiled_cuda = torch.compile(ours), torch.compile(ours_cuda)
        compiled_tconv = torch.compile(ours_tconv)

        def ours_call(module):
            return lambda: module(x, Context(pos=pos, n_meta=meta)).y

        for name, layer, call in (
            ("ours (Hybrid, triton scan)", ours, ours_call(ours)),
            ("ours, compiled (triton scan)", ours, ours_call(compiled)),
            ("ours, compiled (mamba-ssm scan)", ours_cuda, ours_call(compiled_cuda)),
            ("ours, compiled (triton scan, torch conv)", ours_tconv, ours_call(compiled_tconv)),
            ("mamba-ssm Mamba + SDPA/flex", assembled, lambda layer=assembled: layer(x)),
        ):
            params = sum(p.numel() for p in layer.parameters())
            rows.append({"section": "layer", "case": f"d={d} H={H}/{kv} B={B} T={T} {label} bf16", "impl": name,
                         "params_M": params / 1e6, "fwd_ms": median_ms(call),
                         "fwd_bwd_ms": median_ms(fwd_bwd(call, [x, *layer.parameters()]))})
            print(rows[-1], flush=True)


# ----------------------------------------------------------------------------- model

CORE = ("llama", "mamba", "mamba2", "samba", "roadmap-b-parallel", "roadmap-c-swa", "roadmap-d-kvshare",
        "roadmap-e-meta")
# Hymba's Table 11 shapes (window 1024, 128 meta tokens, vocab 32001)
SIZES = {"125M": {"size.d_model": 512, "size.n_layers": 24, "attention.n_heads": 8, "attention.n_kv_heads": 4,
                  "mlp.hidden": 1664},
         "350M": {"size.d_model": 768, "size.n_layers": 32, "attention.n_heads": 12, "attention.n_kv_heads": 4,
                  "mlp.hidden": 2432}}


def core_model(name: str, size: str):
    from ablate.config import override
    from ablate.variants import load_variant

    cfg = load_variant(name).model
    sets = {**SIZES[size], "size.vocab_size": 32001, "mamba2.head_dim": 64}
    if cfg.layout.window is not None:
        sets["layout.window"] = 1024
    for key, value in sets.items():
        cfg = override(cfg, key, value)
    return cfg


def training_step(cfg, compile: str, batch: int, seq: int, device: str = "cuda"):
    """One bf16 training step (forward, loss, backward, AdamW) of a model of ``cfg`` on random
    tokens, as the model and profile sections time it. -> (step, model, optimizer)."""
    from ablate.model import LM
    from ablate.ops.backends import resolve

    model = LM(cfg, resolve("auto", device, compile)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    tokens = torch.randint(0, cfg.size.vocab_size, (batch, seq + 1), device=device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            logits = model(tokens[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model, opt


def bench_model(rows: list[dict], sizes=tuple(SIZES), compile_modes=("on",), variants=CORE, batch: int = 8,
                seq: int = 2048, **_) -> None:
    from ablate.sizing import count_params, train_flops_per_token

    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in gpu_name()), None)
    for size, name, compile in itertools.product(sizes, variants, compile_modes):
        cfg = core_model(name, size)
        step, model, opt = training_step(cfg, compile, batch, seq)
        step()  # compiles, when compiling
        ms = median_ms(step, warmup=1000, rep=3000)
        tps = batch * seq / (ms / 1e3)
        flops = train_flops_per_token(cfg, seq)
        rows.append({"section": "model", "case": f"{size} bf16 B={batch} T={seq}", "impl": name, "compile": compile,
                     "params_M": count_params(cfg).total / 1e6, "step_ms": ms, "tokens_per_s": tps,
                     "MFU": tps * flops / peak if peak else None})
        print(rows[-1], flush=True)
        del model, opt, step
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- profile

# kernel name -> what it does, first match wins (names as CUDA and the CPU profiler report them)
KERNEL_KINDS = (
    ("optimizer", ("adam",)),
    ("attention", ("flash", "fmha", "attention", "flex", "sdpa")),
    ("scan / ssd", ("scan", "ssd", "chunk_state", "state_pass", "chunk_output")),
    ("conv", ("conv",)),
    ("matmul", ("gemm", "matmul", "mm", "cutlass", "sm90_xmma", "nvjet", "linear", "addmm", "bmm")),
    ("norm", ("norm",)),
    ("loss / softmax", ("softmax", "cross_entropy", "nll", "log_softmax")),
    ("fused (inductor)", ("triton_",)),
    ("elementwise / copies", ("elementwise", "vectorized", "copy", "fill", "cat", "index", "reduce", "mul", "add",
                              "silu", "sigmoid", "exp", "sum", "where")),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)), "other")


def profile_rows(step, steps: int, device: str) -> tuple[list[tuple[str, float]], float]:
    """``steps`` training steps under torch.profiler (after the caller's warm-up): every kernel's
    self time per step, in ms, largest first, and the step's wall time (ms) measured around them."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if device == "cuda" else [ProfilerActivity.CPU]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        wall_ms = (time.perf_counter() - t0) * 1e3 / steps
    events = prof.key_averages()
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    # on the CPU every op nests others: the leaves' self times add up to the step; on CUDA the kernels'
    kernels = [(e.key, getattr(e, key) / 1e3 / steps) for e in events
               if getattr(e, key) > 0 and (device != "cuda" or e.device_type == torch.autograd.DeviceType.CUDA)]
    return sorted(kernels, key=lambda kv: -kv[1]), wall_ms


def bench_profile(rows: list[dict], sizes=("350M",), variants=("roadmap-b-parallel",), compile_modes=("on",),
                  batch: int = 8, seq: int = 2048, profile_steps: int = 5, profile_top: int = 12,
                  device: str = "cuda", **_) -> None:
    """Where a training step's time goes (issue 17's MFU target): the model section's step under
    torch.profiler, one row per kind of kernel (matmul, attention, scan / ssd, conv, norm, fused
    inductor kernels, elementwise, optimizer, ...) with its ms per step and share of the kernels' time,
    then the largest kernels by name. The kinds are a reading of kernel names (KERNEL_KINDS), so the
    rows also name every kernel they add up."""
    from ablate.sizing import train_flops_per_token

    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in gpu_name()), None) if device == "cuda" else None
    for size, name, compile in itertools.product(sizes, variants, compile_modes):
        cfg = core_model(name, size)
        step, model, opt = training_step(cfg, compile, batch, seq, device)
        for _ in range(3):  # compiles, when compiling; then the allocator settles
            step()
        kernels, wall_ms = profile_rows(step, profile_steps, device)
        total = sum(ms for _, ms in kernels)
        case = f"{size} bf16 B={batch} T={seq} compile {compile}"
        flops = train_flops_per_token(cfg, seq) * batch * seq
        mfu = flops / (wall_ms / 1e3) / peak if peak else None
        kinds: dict[str, list] = {}
        for kernel, ms in kernels:
            kinds.setdefault(kernel_kind(kernel), []).append((kernel, ms))
        for kind, members in sorted(kinds.items(), key=lambda kv: -sum(ms for _, ms in kv[1])):
            ms = sum(ms for _, ms in members)
            rows.append({"section": "profile", "case": case, "impl": name, "kind": kind, "ms_per_step": ms,
                         "share": ms / total if total else None, "kernels": len(members),
                         "largest": members[0][0][:80], "step_ms": wall_ms, "MFU": mfu})
            print(rows[-1], flush=True)
        for kernel, ms in kernels[:profile_top]:
            rows.append({"section": "profile", "case": case, "impl": name, "kind": f"kernel ({kernel_kind(kernel)})",
                         "ms_per_step": ms, "share": ms / total if total else None, "kernels": 1,
                         "largest": kernel[:80], "step_ms": wall_ms, "MFU": mfu})
        del model, opt, step
        if device == "cuda":
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- inference


def bench_inference(rows: list[dict], context: int = 8000, new: int = 64, variants=CORE,
                    decode_compile: bool = False, step_impls=("auto",), **_) -> None:
    """Decoding eager and replayed as a CUDA graph; with decode_compile also compiled before
    capture (a minute or two per variant to build, reported). ``step_impls``: the SSM layers'
    decoding-step kernels to time, each a row ('auto': what resolve picks, the fused Triton kernels
    on CUDA; 'torch': the reference ops), the same weights for every row of a variant."""
    import dataclasses

    from ablate.model import LM, GraphedStep
    from ablate.ops.backends import resolve
    from ablate.sizing import cache_bytes

    modes = ("eager", "graph", "graph_compiled") if decode_compile else ("eager", "graph")
    for name, impl in ((n, i) for n in variants for i in step_impls):
        cfg = core_model(name, "350M")
        backends = resolve("auto", "cuda")
        if impl != "auto":
            backends = dataclasses.replace(backends, step=impl)
        torch.manual_seed(0)
        model = LM(cfg, backends).cuda().bfloat16().eval()
        prompt = torch.randint(0, cfg.size.vocab_size, (1, context), device="cuda")
        with torch.no_grad():
            prefill_ms = median_ms(lambda model=model, p=prompt: model(p, model.new_cache(context + new)),
                                   warmup=500, rep=2000)
            speeds, built_s = {}, None
            for mode in modes:
                cache = model.new_cache(context + new)
                nxt = model(prompt, cache).logits[:, -1].argmax(-1, keepdim=True)
                measured = cache.nbytes()  # allocated at the prefill for context + new tokens
                t0 = time.perf_counter()
                if mode == "eager":
                    step = lambda t, model=model, cache=cache: model(t, cache).logits[:, -1]  # noqa: E731
                else:
                    step = GraphedStep(model, cache, 1, compile=mode == "graph_compiled")
                if mode == "graph_compiled":
                    built_s = time.perf_counter() - t0
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(new):
                    nxt = step(nxt).argmax(-1, keepdim=True)
                torch.cuda.synchronize()
                speeds[mode] = new / (time.perf_counter() - t0)
        rows.append({"section": "inference", "case": f"350M bf16 B=1 context={context} +{new}", "impl": name,
                     "prefill_tok_s": context / (prefill_ms / 1e3), "decode_tok_s": speeds["graph"],
                     "decode_eager_tok_s": speeds["eager"], "decode_compiled_tok_s": speeds.get("graph_compiled"),
                     "compiled_step_build_s": built_s, "step_impl": model.backends.step,
                     "cache_MB_measured": measured / 1e6,
                     "cache_MB_analytic": cache_bytes(cfg, context + new, "bf16")["total"] / 1e6})
        print(rows[-1], flush=True)
        del model, cache, step
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- peers


def bench_peers(rows: list[dict], **options) -> None:
    """benchmarks/peers.py (imported here: it uses this module's helpers)."""
    from benchmarks.peers import bench_peers as run_peers

    run_peers(rows, **options)


# ----------------------------------------------------------------------------- cpu


def bench_cpu(rows: list[dict], cpu_sweep: str = "sweeps/default.yaml", cpu_steps: int = 30, cpu_warmup: int = 5,
              cpu_rounds: int = 5, batch: int | None = None, seq: int = 64, vocab: int = 256, **_) -> None:
    """A training step per variant of ``cpu_sweep`` (first point of each label), single-threaded
    like each `make sweep` worker: forward + cross-entropy + backward + AdamW as the recipe builds
    it (param groups, betas, eps, weight decay), fp32, the backends ``resolve`` picks on CPU and
    the allocator setting a CPU run makes (``train.allocator``). The variants are timed in turn,
    ``cpu_rounds`` rounds of ``cpu_steps / cpu_rounds`` steps each after ``cpu_warmup`` steps, so a
    machine whose speed drifts (a shared core) slows them all alike; the step time is the median
    of each variant's ``cpu_steps`` timed steps."""
    import statistics

    from ablate.model import LM
    from ablate.ops.backends import resolve
    from ablate.sizing import count_params
    from ablate.sweep.grid import load_sweep
    from ablate.train.recipe import build_optimizer

    try:
        from ablate.train.allocator import keep_freed_memory
    except ImportError:  # an older ablate timed by benchmarks/cpu_revisions.py: its runs had no allocator setting
        def keep_freed_memory():
            return None
    keep_freed_memory()  # as a CPU training run does (ablate/train/run.py)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sweep = load_sweep(cpu_sweep)
        cases = {}
        for point, cfg in sweep.runs.values():
            if point.variant in cases:
                continue
            # the run's model has the default vocab; the run sets the task's (ablate/train/run.py)
            model_cfg = dataclasses.replace(cfg.model, size=dataclasses.replace(cfg.model.size, vocab_size=vocab))
            torch.manual_seed(0)
            model = LM(model_cfg, resolve("auto", "cpu", "off"))
            opt, _ = build_optimizer(model, cfg.recipe, cfg.recipe.max_steps)
            B = batch or cfg.recipe.batch_size
            tokens = torch.randint(0, vocab, (B, seq + 1))

            def step(model=model, opt=opt, tokens=tokens):
                logits = model(tokens[:, :-1]).logits
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            for _ in range(cpu_warmup):
                step()
            cases[point.variant] = (model_cfg, B, step, [])
        rounds = max(1, min(cpu_rounds, cpu_steps))
        for r in range(rounds):
            for _, _, step, times in cases.values():
                for _ in range(cpu_steps // rounds + (r < cpu_steps % rounds)):
                    t0 = time.perf_counter()
                    step()
                    times.append(time.perf_counter() - t0)
        block = []
        for label, (model_cfg, B, _, times) in cases.items():
            ms = statistics.median(times) * 1e3
            block.append({"section": "cpu", "case": f"{sweep.cfg.name}: B={B} T={seq} V={vocab} fp32, 1 thread",
                          "impl": label, "params_M": count_params(model_cfg).total / 1e6,
                          "step_ms": ms, "tokens_per_s": B * seq / (ms / 1e3)})
        base = next((r["tokens_per_s"] for r in block if r["impl"] == "llama"), block[0]["tokens_per_s"])
        for row in block:
            row["vs_attention"] = row["tokens_per_s"] / base
            print(row, flush=True)
        rows.extend(block)
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- results file


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"


def cpu_name() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"CPU {model}"


def machine_name(rows: list[dict]) -> str:
    cpu_rows = (*CPU_SECTIONS, "cpu_revisions")  # benchmarks/cpu_revisions.py's rows are CPU timings too
    sections = {r["section"] for r in rows}
    if sections <= set(cpu_rows):
        return cpu_name()
    return gpu_name() if not sections & set(cpu_rows) else f"{gpu_name()}; {cpu_name()}"


def write_results(rows: list[dict], out: Path, command: str) -> None:
    import pandas as pd

    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    machine = machine_name(rows)
    text = [f"\n## {stamp} — {machine}\n", f"command: `{command}`  ",
            f"torch {torch.__version__}, Python {platform.python_version()}\n"]
    frame = pd.DataFrame(rows)
    for section, part in frame.groupby("section", sort=False):
        part = part.dropna(axis=1, how="all").drop(columns="section")
        text.append(f"\n### {section}\n\n" + part.to_markdown(index=False, floatfmt=".3f") + "\n")
    with out.open("a") as f:
        f.write("".join(text))
    with out.with_suffix(".jsonl").open("a") as f:
        for row in rows:
            f.write(json.dumps({"time": stamp, "gpu": machine, "command": command, **row}) + "\n")


SECTIONS = {"scan": bench_scan, "conv": bench_conv, "ssd": bench_ssd, "attention": bench_attention,
            "layer": bench_layer, "model": bench_model, "profile": bench_profile, "inference": bench_inference,
            "peers": bench_peers, "cpu": bench_cpu}
CPU_SECTIONS = ("cpu",)
OPT_IN = ("peers", "cpu", "profile")  # run only when named
GPU_SECTIONS = tuple(s for s in SECTIONS if s not in CPU_SECTIONS)
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s not in OPT_IN)


def run(sections: list[str], out: Path, command: str, **options) -> list[dict]:
    """options: sizes (model, peers), compile_modes (model section), variants (model, inference),
    decode_compile (inference), peers_* (peers: see benchmarks/peers.bench_peers), cpu_sweep, cpu_steps,
    cpu_warmup, cpu_rounds (cpu)."""
    gpu = [s for s in sections if s not in CPU_SECTIONS]
    if gpu and not torch.cuda.is_available():
        raise SystemExit(f"benchmarks.bench sections {', '.join(gpu)} need a CUDA GPU (section cpu does not)")
    rows: list[dict] = []
    for section in sections:
        SECTIONS[section](rows, **options)
    write_results(rows, out, command)
    return rows


def positive_ints(text: str) -> list[int]:
    """An argparse type for "1,64"."""
    import argparse

    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma list of positive integers")
    return values


def _peers_choices() -> tuple[tuple[str, ...], tuple[str, ...]]:
    from benchmarks.peers import PAIRS, PARTS

    return tuple(PAIRS), PARTS


def build_parser():
    import argparse

    from ablate.cli import comma_list

    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", type=comma_list(SECTIONS), default=list(DEFAULT_SECTIONS),
                   help="comma list of sections: " + ", ".join(SECTIONS) + " (default: "
                   + ", ".join(DEFAULT_SECTIONS) + ")")
    p.add_argument("--out", default="benchmarks/RESULTS.md", help="results file (appended)")
    p.add_argument("--sizes", type=comma_list(SIZES), default=list(SIZES),
                   help="model and peers sections (training): comma list of " + ", ".join(SIZES))
    p.add_argument("--compile", type=comma_list(("on", "off")), default=["on"],
                   help="model section: torch.compile blocks: on, off or off,on")
    p.add_argument("--variants", type=comma_list(CORE), default=list(CORE),
                   help="model and inference sections: comma list of core variants (default all)")
    p.add_argument("--step-impls", type=comma_list(("auto", "torch", "triton")), default=["auto"],
                   help="inference section: the SSM decoding-step kernels, one row each (auto | torch | triton)")
    p.add_argument("--decode-compile", action="store_true",
                   help="inference section: also time the decoding step compiled before capture (minutes per variant)")
    peer_pairs, peer_parts = _peers_choices()
    p.add_argument("--peers-pairs", type=comma_list(peer_pairs), default=list(peer_pairs),
                   help="peers section: comma list of our variants to pair (default: " + ", ".join(peer_pairs) + ")")
    p.add_argument("--peers-parts", type=comma_list(peer_parts), default=list(peer_parts),
                   help="peers section: train, decode or both")
    p.add_argument("--peers-steps", type=int, default=10, help="peers section: timed training steps (median)")
    p.add_argument("--peers-warmup", type=int, default=3, help="peers section: untimed training steps first")
    p.add_argument("--peers-context", type=int, default=8192, help="peers section: decoding context (prompt tokens)")
    p.add_argument("--peers-batches", type=positive_ints, default=[1, 64],
                   help="peers section: comma list of decoding batch sizes")
    p.add_argument("--peers-new", type=int, default=128, help="peers section: timed decoding steps")
    p.add_argument("--peers-decode-size", choices=list(SIZES), default="350M", help="peers section: decoding size")
    p.add_argument("--peers-decode-compile", action="store_true",
                   help="peers section: our decoding step compiled before capture (about a minute per row to build)")
    p.add_argument("--peers-budget-s", type=float, default=450.0,
                   help="peers section: rows not started within this many seconds are skipped (and say so)")
    p.add_argument("--cpu-sweep", default="sweeps/default.yaml", help="cpu section: the sweep whose variants it times")
    p.add_argument("--cpu-steps", type=int, default=30, help="cpu section: timed steps per variant (median)")
    p.add_argument("--cpu-warmup", type=int, default=5, help="cpu section: untimed steps first")
    p.add_argument("--cpu-rounds", type=int, default=5, help="cpu section: rounds the variants are timed in, in turn")
    return p


def main(argv: list[str] | None = None) -> int:
    """Options are checked before any GPU work (a wrong one exits 2 naming what is allowed)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    run(args.sections, Path(args.out), "python -m benchmarks.bench " + " ".join(argv), sizes=args.sizes,
        compile_modes=args.compile, variants=args.variants, decode_compile=args.decode_compile,
        step_impls=args.step_impls,
        cpu_sweep=args.cpu_sweep, cpu_steps=args.cpu_steps, cpu_warmup=args.cpu_warmup,
        cpu_rounds=args.cpu_rounds, peers_pairs=args.peers_pairs, peers_parts=args.peers_parts,
        peers_steps=args.peers_steps, peers_warmup=args.peers_warmup, peers_context=args.peers_context,
        peers_batches=args.peers_batches, peers_new=args.peers_new, peers_decode_size=args.peers_decode_size,
        peers_decode_compile=args.peers_decode_compile, peers_budget_s=args.peers_budget_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
