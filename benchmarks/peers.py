"""The ``peers`` section of ``benchmarks/bench.py``: our models against the stacks a user would pick
instead, built at the same shapes in the same process (issue 17).

Pairs (our core variant -> its peer):

  llama                 HF transformers ``LlamaForCausalLM``, attn_implementation="sdpa", torch.compile
  mamba                 mamba-ssm ``MambaLMHeadModel``: Mamba1 mixer + GatedMLP, fused add+RMSNorm
  mamba2                the same with ``ssm_cfg={"layer": "Mamba2"}``
  roadmap-a-sequential  the same with its attention layers as ``attn_layer_idx`` / ``attn_cfg`` (MHA)

Training (``--sizes``, default 125M and 350M of bench's SIZES): bf16 autocast over fp32 weights,
B=8, T=2048, one full step (forward, cross-entropy on float logits, backward, fused AdamW) exactly as
``bench_model`` times ours; ``--peers-warmup`` steps first (compilation included), then the median
of ``--peers-steps`` steps timed with CUDA events. Peak memory is over the timed steps. MFU uses our
model's FLOPs per token for both (same shapes).

Decoding (350M, 8k context, batch 1 and 64, bf16): ours as ``bench_inference`` decodes (prefill with
the cache, then ``GraphedStep`` replays, greedy, timed over ``--peers-new`` tokens); mamba-ssm's
``generate(cg=True)`` and HF's ``generate(cache_implementation="static")`` (which compiles the
decoding forward) are timed whole, as users call them, with ``new + 2`` and with 2 new tokens: the
difference is ``new`` steady-state steps (prefill, cache allocation and graph capture cancel). The
longer call runs once first, so every compile and capture happens before the timed calls. Peak
memory is over the whole row (prefill included: ours computes the prompt's full logits).

Every peer is optional: a missing package makes its rows say "skipped: <package> not installed"
and everything else runs; any failure is recorded in the row's ``error`` field and the section
goes on. Rows started after ``--peers-budget-s`` seconds are skipped with that reason, so the
section ends within one device call.

The builders below (``llama_config_kwargs``, ``mamba_ssm_config_kwargs``) and the parameter
counters are pure functions of our ``ModelConfig``, unit-tested on CPU (tests/test_bench_peers.py).
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable

import torch

from ablate.config import ModelConfig
from ablate.layers import swiglu_hidden
from ablate.plan import expand

# our variant -> the package its peer needs
PAIRS = {"llama": "transformers", "mamba": "mamba_ssm", "mamba2": "mamba_ssm", "roadmap-a-sequential": "mamba_ssm"}
PARTS = ("train", "decode")
PARAMS_TOLERANCE = 0.02  # parameter counts further apart than this are flagged in the row
GATED_MLP_MULTIPLE = 128  # mamba-ssm's GatedMLP rounds its hidden width up to this
# The section runs on CUDA; the CPU tests switch these to run the same rows on tiny models
DEVICE = "cuda"
COMPILE = True  # torch.compile where a side is measured compiled (ours' blocks, HF's training model)


# ----------------------------------------------------------------------------- peer configurations


def _plain_plan(cfg: ModelConfig, what: str):
    """The layer plan, refused where a peer cannot express it (windows, KV sharing, meta tokens,
    value heads of another width)."""
    plan = expand(cfg)
    if cfg.n_meta:
        raise ValueError(f"{what} has no meta tokens (n_meta = {cfg.n_meta})")
    if any(s.window is not None for s in plan):
        raise ValueError(f"{what} has no sliding-window attention")
    if any(s.kv_role != "none" for s in plan):
        raise ValueError(f"{what} has no cross-layer KV sharing")
    head_dim = cfg.attention.head_dim or cfg.size.d_model // cfg.attention.n_heads
    if cfg.attention.v_head_dim not in (None, head_dim):
        raise ValueError(f"{what} has value heads as wide as query heads (v_head_dim = {cfg.attention.v_head_dim})")
    return plan, head_dim


def llama_config_kwargs(cfg: ModelConfig) -> dict:
    """Keyword arguments of ``transformers.LlamaConfig`` for the same model as our attention-only
    ``cfg``: width, layers, heads, KV heads, head dim, SwiGLU width, vocabulary, tied embeddings,
    RMSNorm epsilon, RoPE base, no biases."""
    plan, head_dim = _plain_plan(cfg, "HF LlamaForCausalLM")
    if any(s.mixer != "attention" for s in plan):
        raise ValueError("HF LlamaForCausalLM is attention-only; this plan has "
                         + ", ".join(sorted({s.mixer for s in plan} - {"attention"})))
    if cfg.mlp.kind != "swiglu":
        raise ValueError("HF LlamaForCausalLM always has its SwiGLU MLP (mlp.kind must be swiglu)")
    d = cfg.size.d_model
    return {
        "vocab_size": cfg.size.vocab_size, "hidden_size": d, "intermediate_size": swiglu_hidden(d, cfg.mlp.hidden),
        "num_hidden_layers": cfg.size.n_layers, "num_attention_heads": cfg.attention.n_heads,
        "num_key_value_heads": cfg.attention.n_kv_heads or cfg.attention.n_heads, "head_dim": head_dim,
        "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.attention.rope_theta,
        "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False, "initializer_range": cfg.init_std,
        "max_position_embeddings": 16384, "attn_implementation": "sdpa",
        # random weights: no end-of-sequence token may stop a timed generate early
        "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
    }


def llama_param_count(kw: dict) -> int:
    """Parameters of ``LlamaForCausalLM(LlamaConfig(**kw))`` with tied embeddings, from its layout."""
    d, hd = kw["hidden_size"], kw["head_dim"]
    attn = d * hd * (2 * kw["num_attention_heads"] + 2 * kw["num_key_value_heads"])  # q, k, v, o
    layer = attn + 3 * d * kw["intermediate_size"] + 2 * d  # + gate/up/down + two RMSNorms
    return kw["vocab_size"] * d + kw["num_hidden_layers"] * layer + d


def mamba_ssm_config_kwargs(cfg: ModelConfig, causal_conv1d: bool = True, rope: bool = False) -> dict:
    """Keyword arguments of ``mamba_ssm.models.config_mamba.MambaConfig`` for the same model as our
    Mamba / Mamba-2 / sequential Mamba+attention ``cfg``: one SSM kind (Mamba1 or Mamba2) plus
    attention layers at our plan's attention indices (MHA: causal, GQA, no biases), GatedMLP of our
    SwiGLU width (0: no MLP), RMSNorm with fused add-norm and residuals in fp32 (mamba-ssm's own
    defaults), vocabulary not padded (same head width as ours), tied embeddings.
    causal_conv1d: whether that package is importable (Mamba2's fused path needs it);
    rope: rotary attention (mamba-ssm's needs flash_attn), else none."""
    plan, head_dim = _plain_plan(cfg, "mamba-ssm's MambaLMHeadModel")
    mixers = {s.mixer for s in plan}
    ssm = mixers & {"mamba", "mamba2"}
    if not mixers <= {"mamba", "mamba2", "attention"} or len(ssm) != 1:
        raise ValueError("mamba-ssm's MambaLMHeadModel takes one SSM kind (mamba or mamba2) plus attention layers; "
                         f"this plan has {', '.join(sorted(mixers))}")
    d = cfg.size.d_model
    if ssm == {"mamba"}:
        m = cfg.mamba
        ssm_cfg = {"layer": "Mamba1", "d_state": m.d_state, "d_conv": m.d_conv, "expand": m.expand,
                   "dt_rank": math.ceil(d / 16) if m.dt_rank == "auto" else m.dt_rank, "conv_bias": m.conv_bias,
                   "dt_min": m.dt_min, "dt_max": m.dt_max}
    else:
        m = cfg.mamba2
        ssm_cfg = {"layer": "Mamba2", "d_state": m.d_state, "d_conv": m.d_conv, "expand": m.expand,
                   "headdim": m.head_dim, "ngroups": m.n_groups, "dt_min": m.dt_min, "dt_max": m.dt_max,
                   "use_mem_eff_path": causal_conv1d}
    attn_idx = [s.index for s in plan if s.mixer == "attention"]
    attn_cfg = {}
    if attn_idx:
        heads = cfg.attention.n_heads
        attn_cfg = {"num_heads": heads, "num_heads_kv": cfg.attention.n_kv_heads or heads, "head_dim": head_dim,
                    "causal": True, "qkv_proj_bias": False, "out_proj_bias": False,
                    "rotary_emb_dim": head_dim if rope else 0, "rotary_emb_base": cfg.attention.rope_theta}
    return {"d_model": d, "d_intermediate": swiglu_hidden(d, cfg.mlp.hidden) if cfg.mlp.kind == "swiglu" else 0,
            "n_layer": cfg.size.n_layers, "vocab_size": cfg.size.vocab_size, "ssm_cfg": ssm_cfg,
            "attn_layer_idx": attn_idx, "attn_cfg": attn_cfg, "rms_norm": True, "residual_in_fp32": True,
            "fused_add_norm": True, "pad_vocab_size_multiple": 1, "tie_embeddings": True}


def mamba_ssm_param_count(kw: dict) -> int:
    """Parameters of ``MambaLMHeadModel(MambaConfig(**kw))``, from mamba-ssm 2.3's module layout
    (checked against the real model in the section's rows and in a GPU test)."""
    d, ssm = kw["d_model"], kw["ssm_cfg"]
    expand_, d_state, d_conv = ssm.get("expand", 2), ssm.get("d_state"), ssm.get("d_conv", 4)
    d_inner = expand_ * d
    if ssm.get("layer", "Mamba1") == "Mamba1":
        d_state = d_state or 16
        rank = ssm.get("dt_rank", "auto")
        rank = math.ceil(d / 16) if rank == "auto" else rank
        mixer = (d * 2 * d_inner  # in_proj (no bias)
                 + d_inner * d_conv + (d_inner if ssm.get("conv_bias", True) else 0)  # depthwise conv
                 + d_inner * (rank + 2 * d_state)  # x_proj
                 + rank * d_inner + d_inner  # dt_proj with bias
                 + d_inner * d_state + d_inner  # A_log, D
                 + d_inner * d)  # out_proj
    else:
        d_state = d_state or 128
        groups, heads = ssm.get("ngroups", 1), d_inner // ssm.get("headdim", 64)
        conv_dim = d_inner + 2 * groups * d_state
        mixer = (d * (2 * d_inner + 2 * groups * d_state + heads)  # in_proj: z, x, B, C, dt
                 + conv_dim * d_conv + (conv_dim if ssm.get("conv_bias", True) else 0)
                 + 3 * heads  # dt_bias, A_log, D
                 + d_inner  # gated RMSNorm
                 + d_inner * d)  # out_proj
    total = 0
    attn = kw.get("attn_cfg") or {}
    for i in range(kw["n_layer"]):
        if i in kw.get("attn_layer_idx", ()):
            hd = attn.get("head_dim") or d // attn["num_heads"]
            h, hkv = attn["num_heads"], attn.get("num_heads_kv") or attn["num_heads"]
            qkv = hd * (h + 2 * hkv)
            total += d * qkv + (qkv if attn.get("qkv_proj_bias", True) else 0)
            total += h * hd * d + (d if attn.get("out_proj_bias", True) else 0)
        else:
            total += mixer
        total += d  # the mixer's norm
        if kw.get("d_intermediate", 0):
            hidden = -(-kw["d_intermediate"] // GATED_MLP_MULTIPLE) * GATED_MLP_MULTIPLE
            total += d + 3 * d * hidden  # norm2, fc1 (2 x hidden), fc2
    multiple = kw.get("pad_vocab_size_multiple", 8)
    vocab = -(-kw["vocab_size"] // multiple) * multiple
    head = 0 if kw.get("tie_embeddings", True) else vocab * d
    return total + vocab * d + head + d  # embedding, head, final norm


def structural_notes(cfg: ModelConfig, peer: str, kw: dict) -> list[str]:
    """What differs between ours and the peer by construction (not by measurement)."""
    plan = expand(cfg)
    notes = []
    if peer == "transformers":
        notes.append("same shapes; HF projects q, k, v with three matmuls, ours with one")
        return notes
    n_mamba = sum(s.mixer == "mamba" for s in plan)
    if n_mamba and cfg.mamba.inner_norms:
        rank = math.ceil(cfg.size.d_model / 16) if cfg.mamba.dt_rank == "auto" else cfg.mamba.dt_rank
        extra = n_mamba * (rank + 2 * cfg.mamba.d_state)
        notes.append(f"ours has Hymba's RMSNorms on dt, B and C in each Mamba layer ({extra:,} parameters in all); "
                     "mamba-ssm's Mamba has none")
    if kw.get("attn_layer_idx"):
        rope = kw["attn_cfg"].get("rotary_emb_dim", 0)
        notes.append("mamba-ssm's MHA with rotary embeddings (flash_attn)" if rope else
                     "mamba-ssm's MHA has no RoPE (its rotary embedding needs flash_attn), ours has RoPE")
    hidden = kw.get("d_intermediate", 0)
    if hidden % GATED_MLP_MULTIPLE:
        notes.append(f"mamba-ssm's GatedMLP rounds the MLP width {hidden} up to a multiple of {GATED_MLP_MULTIPLE}")
    notes.append("mamba-ssm: fused add+RMSNorm, residual stream in fp32")
    return notes


def compare(ours: dict | None, peer: dict | None, key: str = "tok_s") -> dict:
    """The ratio ours/peer of ``key`` and, with parameter counts on both sides, their gap:
    params_diff_pct = (peer - ours) / ours, params_within_2pct."""
    out: dict = {}
    if ours and peer and ours.get(key) and peer.get(key):
        out["ratio"] = ours[key] / peer[key]
    if ours and peer and ours.get("params") and peer.get("params"):
        gap = (peer["params"] - ours["params"]) / ours["params"]
        out["params_diff_pct"] = 100 * gap
        out["params_within_2pct"] = abs(gap) <= PARAMS_TOLERANCE
    return out


def skip_reason(package: str) -> str | None:
    """'skipped: <package> not installed' when it cannot be found, else None."""
    return None if importlib.util.find_spec(package) is not None else f"skipped: {package} not installed"


def has(package: str) -> bool:
    try:
        importlib.import_module(package)
        return True
    except Exception:  # noqa: BLE001  (an installed package that cannot load counts as absent)
        return False


def attempt(fn: Callable[[], dict]) -> tuple[dict | None, str | None]:
    """fn() or, when it raises, None and the error as one line (the traceback goes to stderr)."""
    try:
        return fn(), None
    except Exception as err:  # noqa: BLE001  (one failing peer must not end the section)
        traceback.print_exc(file=sys.stderr)
        text = f"{type(err).__name__}: {err}".replace("\n", " ")
        return None, text[:400]
    finally:
        free()


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fresh_compiler() -> None:
    """Each model compiles from scratch: a second size would otherwise recompile with dynamic
    shapes (automatic dynamic after a shape change), which is not how either side is used."""
    torch._dynamo.reset()
    try:
        from torch._inductor import cudagraph_trees

        cudagraph_trees.reset_cudagraph_trees()
    except Exception:  # noqa: BLE001  (private API; its absence only costs memory)
        pass


def version(package: str) -> str:
    """' <version>' of an importable package, else ''."""
    try:
        return " " + importlib.import_module(package).__version__
    except Exception:  # noqa: BLE001
        return ""


def peer_label(name: str, kw: dict | None = None, part: str = "train") -> str:
    if PAIRS[name] == "transformers":
        how = "sdpa, torch.compile" if part == "train" else "sdpa; generate, static cache, compiled forward"
        return f"HF transformers{version('transformers')} LlamaForCausalLM ({how})"
    kw = kw or {}
    layer = kw.get("ssm_cfg", {}).get("layer", "Mamba1")
    extra = f" + MHA at layers {kw['attn_layer_idx'][0]}, {kw['attn_layer_idx'][1]}, ..." \
        if len(kw.get("attn_layer_idx", ())) > 1 else ""
    conv = "causal-conv1d" if has("causal_conv1d") else "no causal-conv1d"
    how = "" if part == "train" else "; generate(cg=True)"
    return f"mamba-ssm{version('mamba_ssm')} MambaLMHeadModel ({layer}{extra}, GatedMLP, fused add-norm, {conv}{how})"


# ----------------------------------------------------------------------------- building the models


def build_ours(cfg: ModelConfig, compile: str):
    from ablate.model import LM
    from ablate.ops.backends import resolve

    return LM(cfg, resolve("auto", DEVICE, compile if COMPILE else "off")).to(DEVICE)


def build_hf_llama(kw: dict, use_cache: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**kw, use_cache=use_cache)).to(DEVICE)


def build_mamba_ssm(kw: dict, dtype=None):
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    return MambaLMHeadModel(MambaConfig(**kw), device=DEVICE, dtype=dtype)


def peer_kwargs(name: str, cfg: ModelConfig) -> dict:
    if PAIRS[name] == "transformers":
        return llama_config_kwargs(cfg)
    return mamba_ssm_config_kwargs(cfg, causal_conv1d=has("causal_conv1d"), rope=has("flash_attn"))


def params_of(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights once


# ----------------------------------------------------------------------------- training


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def reset_peak() -> None:
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_GB() -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if DEVICE == "cuda" else None


def timed_median_ms(step: Callable[[], None], iters: int) -> float:
    """The median of iters steps, each timed with CUDA events (a wall clock off CUDA)."""
    if DEVICE != "cuda":
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            step()
            times.append(1e3 * (time.perf_counter() - t0))
        return statistics.median(times)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def training_step(model: torch.nn.Module, forward: Callable, vocab: int, batch: int, seq: int) -> Callable[[], None]:
    """bench_model's step: bf16 autocast, cross-entropy, backward, fused AdamW, on random tokens."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    tokens = torch.randint(0, vocab, (batch, seq + 1), device=DEVICE)

    def step():
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            logits = forward(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def training_builds(name: str, cfg: ModelConfig, kw: dict | None) -> dict[str, Callable[[], tuple]]:
    """{'ours': build, 'peer': build} for the training rows; build() -> (model with fp32 weights on
    the GPU, forward(tokens) -> logits). No 'peer' without its package or its config (kw)."""
    def ours():
        model = build_ours(cfg, "on")
        return model, lambda t: model(t).logits

    def hf():
        model = build_hf_llama(kw, use_cache=False)
        compiled = torch.compile(model) if COMPILE else model
        return model, lambda t: compiled(input_ids=t, use_cache=False).logits

    def mamba_ssm():
        model = build_mamba_ssm(kw)
        return model, lambda t: model(t).logits

    builds = {"ours": ours}
    if kw is not None and not skip_reason(PAIRS[name]):
        builds["peer"] = hf if PAIRS[name] == "transformers" else mamba_ssm
    return builds


def measure_training(build: Callable[[], tuple[torch.nn.Module, Callable]], vocab: int, batch: int, seq: int,
                     warmup: int, iters: int) -> dict:
    """build() -> (model with fp32 weights on the GPU, forward(tokens) -> logits), then its
    training_step timed."""
    fresh_compiler()
    free()
    t0 = time.perf_counter()
    model, forward = build()
    step = training_step(model, forward, vocab, batch, seq)
    for _ in range(warmup):
        step()
    sync()
    build_s = time.perf_counter() - t0
    reset_peak()
    ms = timed_median_ms(step, iters)
    out = {"params": params_of(model), "step_ms": ms, "tok_s": batch * seq / (ms / 1e3),
           "peak_GB": peak_GB(), "build_s": build_s}
    return out


def train_row(name: str, size: str, batch: int, seq: int, warmup: int, iters: int) -> dict:
    from ablate.sizing import count_params, train_flops_per_token
    from benchmarks.bench import PEAK_BF16_FLOPS, core_model, gpu_name

    cfg = core_model(name, size)
    package = PAIRS[name]
    row: dict = {"section": "peers", "case": f"{size} train bf16 B={batch} T={seq}", "impl": name}
    errors, notes = [], []
    kw, kw_error = None, None
    try:
        kw = peer_kwargs(name, cfg)
        notes += structural_notes(cfg, package, kw)
    except ValueError as err:
        kw_error = f"peer config: {err}"
    row["peer"] = peer_label(name, kw)
    builds = training_builds(name, cfg, kw)
    ours, err = attempt(lambda: measure_training(builds["ours"], cfg.size.vocab_size, batch, seq, warmup, iters))
    if err:
        errors.append(f"ours: {err}")
    peer = None
    if skip_reason(package):
        errors.append(skip_reason(package))
    elif kw_error:
        errors.append(kw_error)
    else:
        peer, err = attempt(lambda: measure_training(builds["peer"], cfg.size.vocab_size, batch, seq, warmup, iters))
        if err:
            errors.append(f"peer: {err}")
        elif package == "mamba_ssm" and peer["params"] != mamba_ssm_param_count(kw):
            notes.append(f"mamba-ssm's real count {peer['params']:,} differs from the analytic "
                         f"{mamba_ssm_param_count(kw):,}")
    flops = train_flops_per_token(cfg, seq)
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in gpu_name()), None)
    for side, result in (("ours", ours), ("peer", peer)):
        if result:
            row.update({f"{side}_tok_s": round(result["tok_s"]),
                        f"{side}_step_ms": result["step_ms"], f"{side}_peak_GB": result["peak_GB"],
                        f"{side}_MFU": result["tok_s"] * flops / peak if peak else None,
                        f"{side}_build_s": result["build_s"]})
    # counts even where a side did not run: ours from the config, the peer's from its layout
    ours_params = ours["params"] if ours else count_params(cfg).total
    peer_params = peer["params"] if peer else None
    if peer is None and kw is not None:
        peer_params = llama_param_count(kw) if package == "transformers" else mamba_ssm_param_count(kw)
        notes.append("peer parameters counted from its layout (it did not run)")
    row["ours_params_M"] = ours_params / 1e6
    row["peer_params_M"] = None if peer_params is None else peer_params / 1e6
    row.update(compare({**(ours or {}), "params": ours_params}, {**(peer or {}), "params": peer_params}))
    if row.get("params_within_2pct") is False:
        notes.insert(0, f"parameter counts differ by {row['params_diff_pct']:+.2f}% (over 2%)")
    row["note"] = "; ".join(notes) or None
    row["error"] = "; ".join(errors) or None
    return row


# ----------------------------------------------------------------------------- decoding


def measure_ours_decode(cfg: ModelConfig, batch: int, context: int, new: int, compile_step: bool) -> dict:
    from ablate.model import GraphedStep

    fresh_compiler()
    free()
    reset_peak()
    t0 = time.perf_counter()
    model = build_ours(cfg, "off").bfloat16().eval()
    prompt = torch.randint(0, cfg.size.vocab_size, (batch, context), device=DEVICE)
    warm = 4
    with torch.no_grad():
        cache = model.new_cache(context + warm + new)
        nxt = model(prompt, cache, last_only=True).logits[:, -1].argmax(-1, keepdim=True)
        if DEVICE == "cuda":
            step = GraphedStep(model, cache, batch, compile=compile_step)
        else:  # the CPU tests: no graphs to capture
            def step(t):
                return model(t, cache).logits[:, -1]
        for _ in range(warm):
            nxt = step(nxt).argmax(-1, keepdim=True)
        sync()
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(new):
            nxt = step(nxt).argmax(-1, keepdim=True)
        sync()
        seconds = time.perf_counter() - t0
    out = {"tok_s": batch * new / seconds, "step_ms": 1e3 * seconds / new, "build_s": build_s,
           "peak_GB": peak_GB(), "params": params_of(model)}
    return out


def measure_generate(generate: Callable[[int], torch.Tensor], batch: int, context: int, new: int) -> dict:
    """generate(n) -> (batch, context + n) tokens: a peer's own generate with n new tokens.
    Steady-state decoding = the time of new + 2 tokens minus that of 2 (both after a warm call)."""
    t0 = time.perf_counter()
    generate(new + 2)  # compiles / captures, sizes the caches for the longest call
    sync()
    build_s = time.perf_counter() - t0
    times = {}
    for n in (new + 2, 2):
        t0 = time.perf_counter()
        out = generate(n)
        sync()
        times[n] = time.perf_counter() - t0
        if tuple(out.shape) != (batch, context + n):
            raise RuntimeError(f"generate returned {tuple(out.shape)} tokens, expected {(batch, context + n)}")
    seconds = times[new + 2] - times[2]
    if seconds <= 0:
        raise RuntimeError(f"generate of {new + 2} tokens took no longer than of 2 ({times}): noise, raise --peers-new")
    return {"tok_s": batch * new / seconds, "step_ms": 1e3 * seconds / new, "build_s": build_s,
            "short_call_s": times[2]}


def measure_hf_decode(kw: dict, batch: int, context: int, new: int) -> dict:
    fresh_compiler()
    free()
    reset_peak()
    model = build_hf_llama(kw, use_cache=True).to(torch.bfloat16).eval()
    prompt = torch.randint(0, kw["vocab_size"], (batch, context), device=DEVICE)
    mask = torch.ones_like(prompt)

    def generate(n):
        return model.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=n, do_sample=False,
                              cache_implementation="static", pad_token_id=0)

    out = measure_generate(generate, batch, context, new)
    # generate keeps the compiled forward it decoded with (transformers 4.5x-5.x: _compiled_call)
    out.update(peak_GB=peak_GB(), params=params_of(model),
               compiled=getattr(model, "_compiled_call", None) is not None)
    return out


def measure_mamba_ssm_decode(kw: dict, batch: int, context: int, new: int) -> dict:
    fresh_compiler()
    free()
    reset_peak()
    model = build_mamba_ssm(kw, dtype=torch.bfloat16).eval()
    prompt = torch.randint(0, kw["vocab_size"], (batch, context), device=DEVICE)

    def generate(n):
        return model.generate(prompt, max_length=context + n, cg=True, top_k=1)

    out = measure_generate(generate, batch, context, new)
    out.update(peak_GB=peak_GB(), params=params_of(model))
    model._decoding_cache = None  # its CUDA graphs and their memory pool
    return out


def decode_row(name: str, size: str, batch: int, context: int, new: int, compile_step: bool) -> dict:
    from benchmarks.bench import core_model

    cfg = core_model(name, size)
    package = PAIRS[name]
    row: dict = {"section": "peers", "case": f"{size} decode bf16 B={batch} context={context} +{new}", "impl": name}
    errors, notes = [], []
    ours, err = attempt(lambda: measure_ours_decode(cfg, batch, context, new, compile_step))
    if err:
        errors.append(f"ours: {err}")
    peer, kw = None, None
    try:
        kw = peer_kwargs(name, cfg)
        notes += structural_notes(cfg, package, kw)
    except ValueError as err_:
        errors.append(f"peer config: {err_}")
    row["peer"] = peer_label(name, kw, "decode")
    if skip_reason(package):
        errors.append(skip_reason(package))
    else:
        if kw is None:
            pass
        elif package == "mamba_ssm" and kw["attn_layer_idx"] and not has("flash_attn"):
            # without flash_attn, MHA decodes through an SDPA fallback with is_causal=True over a
            # one-token query (top-left aligned: it sees only the first key), and under cg=True the
            # captured step writes every token to the last cache slot: timing that is not decoding
            errors.append("skipped: flash_attn not installed (mamba-ssm's MHA needs flash_attn_with_kvcache to decode)")
        else:
            measure = measure_hf_decode if package == "transformers" else measure_mamba_ssm_decode
            peer, err = attempt(lambda: measure(kw, batch, context, new))
            if err:
                errors.append(f"peer: {err}")
    if compile_step:
        notes.append("ours: the step compiled before capture (GraphedStep(compile=True))")
    else:  # the peers decode at their best (fused kernels, a compiled forward): say that ours did not
        notes.append("ours: the step captured as a CUDA graph, not compiled (--peers-decode-compile compiles "
                     "it first, as generate(compile_step=True) does)")
    for side, result in (("ours", ours), ("peer", peer)):
        if result:
            row.update({f"{side}_tok_s": round(result["tok_s"], 1), f"{side}_step_ms": result["step_ms"],
                        f"{side}_peak_GB": result["peak_GB"], f"{side}_build_s": result["build_s"]})
    if peer:
        row["peer_short_call_s"] = peer["short_call_s"]
        if peer.get("compiled") is False:
            notes.append("HF generate did not keep a compiled forward (not compiled?)")
    row.update({k: v for k, v in compare(ours, peer).items() if k == "ratio"})
    row["note"] = "; ".join(notes) or None
    row["error"] = "; ".join(errors) or None
    return row


# ----------------------------------------------------------------------------- the section


def bench_peers(rows: list[dict], sizes=("125M", "350M"), peers_pairs=tuple(PAIRS), peers_parts=PARTS,
                peers_batch: int = 8, peers_seq: int = 2048, peers_warmup: int = 3, peers_steps: int = 10,
                peers_decode_size: str = "350M", peers_context: int = 8192, peers_batches=(1, 64),
                peers_new: int = 128, peers_decode_compile: bool = False, peers_budget_s: float = 450.0,
                **_) -> None:
    start = time.perf_counter()
    jobs = []
    if "train" in peers_parts:
        jobs += [(train_row, (name, size, peers_batch, peers_seq, peers_warmup, peers_steps),
                  f"{size} train bf16 B={peers_batch} T={peers_seq}", name)
                 for size in sizes for name in peers_pairs]
    if "decode" in peers_parts:
        jobs += [(decode_row, (name, peers_decode_size, b, peers_context, peers_new, peers_decode_compile),
                  f"{peers_decode_size} decode bf16 B={b} context={peers_context} +{peers_new}", name)
                 for b in peers_batches for name in peers_pairs]
    for fn, args, case, name in jobs:
        spent = time.perf_counter() - start
        if spent > peers_budget_s:
            row = {"section": "peers", "case": case, "impl": name,
                   "error": f"skipped: time budget spent ({spent:.0f} s of --peers-budget-s {peers_budget_s:.0f}); "
                            "run this part alone with --peers-parts / --peers-pairs / --sizes"}
        else:
            t0 = time.perf_counter()
            try:
                row = fn(*args)
            except Exception as err:  # noqa: BLE001  (a row that fails outside its guarded parts)
                traceback.print_exc(file=sys.stderr)
                row = {"section": "peers", "case": case, "impl": name, "error": f"{type(err).__name__}: {err}"[:400]}
            row["row_s"] = time.perf_counter() - t0
        rows.append(row)
        print(row, flush=True)
        free()
