"""Fast GPU kernels against the pure-torch references, forward and backward (skipped without CUDA).

Tolerances follow the device METHOD.md: relative Frobenius error ||out - ref|| / ||ref|| against a
float64 reference; fp32 arithmetic well under 1e-3, bf16/fp16 inputs under 1e-2.
"""

from __future__ import annotations

import pytest
import torch

from ablate.ops.scan import reference

pytestmark = pytest.mark.gpu


def rel_err(out, ref):
    """||out - ref|| / ||ref||, with a floor so an all-zero reference (e.g. dA at T=1 from a zero
    state) is compared absolutely."""
    ref = ref.double()
    return ((out.double() - ref).norm() / (ref.norm() + 1e-6 * ref.numel() ** 0.5)).item()


def scan_inputs(B, D, T, N, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    def r(*s, scale=1.0):
        return (scale * torch.randn(*s, device="cuda", generator=g)).to(dtype).requires_grad_()
    A = (-torch.rand(D, N, device="cuda", generator=g) * 4 - 0.05).requires_grad_()
    return dict(u=r(B, D, T), delta=r(B, D, T, scale=0.5), A=A, B=r(B, N, T), C=r(B, N, T),
                D=torch.randn(D, device="cuda", generator=g).requires_grad_(), z=r(B, D, T),
                delta_bias=(0.1 * torch.randn(D, device="cuda", generator=g)).requires_grad_())


def check_triton_scan(dtype, tol, T, with_state, N=16):
    """Output, final state and every gradient of the Triton scan against the float64 reference."""
    from ablate.ops.scan import triton as tscan

    x = scan_inputs(2, 37, T, N, dtype, seed=T * 7 + with_state)
    h0 = torch.randn(2, 37, N, device="cuda", requires_grad=True) if with_state else None
    x64 = {k: v.detach().double().requires_grad_() for k, v in x.items()}
    h064 = h0.detach().double().requires_grad_() if with_state else None
    y_ref, h_ref = reference.selective_scan(**x64, initial_state=h064, return_final_state=True)
    y, h = tscan.selective_scan(**x, initial_state=h0, return_final_state=True)
    assert torch.isfinite(y).all()
    assert rel_err(y, y_ref) < tol and rel_err(h, h_ref) < tol
    gy = torch.randn_like(y_ref)
    gh = torch.randn_like(h_ref)
    names = list(x) + (["h0"] if with_state else [])
    leaves64 = list(x64.values()) + ([h064] if with_state else [])
    leaves = list(x.values()) + ([h0] if with_state else [])
    refs = torch.autograd.grad((y_ref * gy).sum() + (h_ref * gh).sum(), leaves64)
    outs = torch.autograd.grad((y.double() * gy).sum() + (h.double() * gh).sum(), leaves)
    for name, a, b in zip(names, outs, refs, strict=True):
        if b.norm() < 1e-9:  # exactly-zero reference (dA at T=1 from a zero state): absolute check
            assert a.abs().max() < 1e-5, (name, a.abs().max())
        else:
            assert rel_err(a, b) < tol * 5, (name, rel_err(a, b))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 1e-2), (torch.float16, 1e-2)],
                         ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("T", [1, 31, 100, 257])
@pytest.mark.parametrize("with_state", [False, True])
def test_triton_scan_matches_reference(dtype, tol, T, with_state):
    check_triton_scan(dtype, tol, T, with_state)


def test_triton_scan_without_the_optional_inputs():
    """D, z and delta_bias left out: the backward returns an empty tensor for each (a separate one:
    a custom op may not return one storage twice) and the gradients of the rest match the reference."""
    from ablate.ops.scan import triton as tscan

    x = scan_inputs(2, 37, 70, 16, torch.float32, seed=3)
    x = {k: x[k] for k in ("u", "delta", "A", "B", "C")}
    x64 = {k: v.detach().double().requires_grad_() for k, v in x.items()}
    y, y_ref = tscan.selective_scan(**x), reference.selective_scan(**x64)
    assert rel_err(y, y_ref) < 1e-4
    outs = torch.autograd.grad(y.double().square().sum(), list(x.values()))
    refs = torch.autograd.grad(y_ref.square().sum(), list(x64.values()))
    for a, b in zip(outs, refs, strict=True):
        assert rel_err(a, b) < 5e-4


# other tile shapes: several channels per program (37 is not a multiple of 2 or 4), one step per
# thread (no in-register flips), long chunks
@pytest.mark.parametrize("shape", [(4, 2, 2), (1, 1, 1), (16, 4, 1)], ids=["4-2-2", "1-1-1", "16-4-1"])
@pytest.mark.parametrize("T", [100, 257])
def test_triton_scan_other_tile_shapes(shape, T, monkeypatch):
    from ablate.ops.scan import triton as tscan

    for key, value in zip(("steps_per_thread", "fwd_warps", "bwd_warps"), shape, strict=True):
        monkeypatch.setitem(tscan.CONFIG, key, value)
    check_triton_scan(torch.float32, 1e-4, T, with_state=True)


# the states sit one per lane: fewer states than lanes (repeated), more (two per lane)
@pytest.mark.parametrize("N", [4, 64])
def test_triton_scan_other_state_sizes(N):
    check_triton_scan(torch.float32, 1e-4, 200, with_state=True, N=N)


def test_triton_scan_names_a_state_size_it_cannot_take():
    from ablate.ops.scan import triton as tscan

    x = scan_inputs(1, 8, 16, 12, torch.float32, seed=0)
    with pytest.raises(ValueError, match="power of two"):
        tscan.selective_scan(**x)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 1e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T", [1, 3, 70, 130])
@pytest.mark.parametrize("with_state", [False, True])
def test_triton_conv_matches_reference(dtype, tol, T, with_state):
    """Forward, final state and every gradient (input, weight, bias, carried state) against the
    float64 torch conv; the input is a channels-contiguous view, as the mixers pass it."""
    from ablate.ops.conv1d import reference
    from ablate.ops.conv1d import triton as tconv

    g = torch.Generator(device="cuda").manual_seed(T * 3 + with_state)
    B, C, K = 2, 100, 4
    base = torch.randn(B, T, C, device="cuda", generator=g).to(dtype).requires_grad_()
    w = torch.randn(C, K, device="cuda", generator=g, requires_grad=True)
    bias = torch.randn(C, device="cuda", generator=g, requires_grad=True)
    state = torch.randn(B, C, K - 1, device="cuda", generator=g).to(dtype).requires_grad_() if with_state else None
    leaves = [base, w, bias] + ([state] if with_state else [])
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    x64 = leaves64[0].transpose(1, 2)
    y_ref, f_ref = reference.causal_conv1d(x64, *leaves64[1:3], True, initial_state=leaves64[3] if with_state else None,
                                           return_final_state=True)
    y, f = tconv.causal_conv1d(base.transpose(1, 2), w, bias, True, initial_state=state, return_final_state=True)
    assert rel_err(y, y_ref) < tol and rel_err(f, f_ref) < tol
    gy = torch.randn_like(y_ref)
    refs = torch.autograd.grad((y_ref * gy).sum(), leaves64)
    outs = torch.autograd.grad((y.double() * gy).sum(), leaves)
    for a, b in zip(outs, refs, strict=True):
        assert rel_err(a, b) < tol * 5


@pytest.mark.parametrize("window,n_meta,Dv", [(16, 0, 32), (16, 8, 64), (None, 8, 32)])
@pytest.mark.parametrize("T,Hkv", [(131, 2), (73, 1)])  # (73, 1) failed to lower before padding
@pytest.mark.parametrize("B", [2, 3])  # 3: padded to 4 rows (one kernel per power of two)
def test_flex_attention_matches_eager(window, n_meta, Dv, T, Hkv, B):
    from ablate.ops import attention as attn

    q = torch.randn(B, 4, T, 32, device="cuda", requires_grad=True)
    k = torch.randn(B, Hkv, T, 32, device="cuda", requires_grad=True)
    v = torch.randn(B, Hkv, T, Dv, device="cuda", requires_grad=True)
    pos = torch.arange(T, device="cuda")
    out = attn.attention(q, k, v, pos, pos, window, n_meta, impl="flex")
    ref = attn.attention(q.double(), k.double(), v.double(), pos, pos, window, n_meta, impl="eager")
    assert rel_err(out, ref) < 1e-3
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), [q, k, v])
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = attn.attention(q64, k64, v64, pos, pos, window, n_meta, impl="eager")
    refs = torch.autograd.grad((ref * g.double()).sum(), [q64, k64, v64])
    for a, b in zip(grads, refs, strict=True):
        assert rel_err(a, b) < 1e-3


def test_model_trains_on_gpu_with_fast_backends():
    from ablate.model import LM
    from ablate.ops.backends import resolve
    from ablate.variants import load_variant
    from tests.conftest import tiny

    cfg = tiny(load_variant("hymba").model)
    backends = resolve("auto", "cuda")
    assert backends.scan == "triton" and backends.attention == "flex"
    fast, slow = LM(cfg, backends).cuda(), LM(cfg).cuda()
    slow.load_state_dict(fast.state_dict())
    tokens = torch.randint(0, cfg.size.vocab_size, (2, 40), device="cuda")
    assert rel_err(fast(tokens).logits, slow(tokens).logits) < 1e-3


@pytest.mark.parametrize("variant", ["llama", "mamba", "mamba2", "samba", "hymba", "roadmap-d-kvshare"])
def test_graphed_decoding_matches_eager_decoding(variant):
    """Each decoding step replayed as a CUDA graph gives the tokens of eager decoding."""
    from ablate.model import LM
    from ablate.ops.backends import resolve
    from ablate.variants import load_variant
    from tests.conftest import tiny

    model = LM(tiny(load_variant(variant).model), resolve("auto", "cuda")).cuda().eval()
    prompt = torch.randint(0, model.cfg.size.vocab_size, (2, 11), device="cuda")
    graphed = model.generate(prompt, 12, cuda_graph=True)
    eager = model.generate(prompt, 12, cuda_graph=False)
    assert torch.equal(graphed, eager)


@pytest.mark.parametrize("variant", ["llama", "mamba2", "hymba"])
def test_compiled_graphed_step_matches_eager_step(variant):
    """The decoding step compiled and captured gives the eager step's logits, token by token."""
    from ablate.model import LM, GraphedStep
    from ablate.ops.backends import resolve
    from ablate.variants import load_variant
    from tests.conftest import tiny

    model = LM(tiny(load_variant(variant).model), resolve("auto", "cuda")).cuda().eval()
    g = torch.Generator(device="cuda").manual_seed(1)
    tokens = torch.randint(0, model.cfg.size.vocab_size, (2, 17), device="cuda", generator=g)
    with torch.no_grad():
        caches = [model.new_cache(17), model.new_cache(17)]
        for cache in caches:
            model(tokens[:, :11], cache)
        step = GraphedStep(model, caches[1], 2, compile=True)
        for t in range(11, 17):
            eager = model(tokens[:, t : t + 1], caches[0]).logits[:, -1]
            assert rel_err(step(tokens[:, t : t + 1]), eager) < 1e-4


@pytest.mark.parametrize("variant", ["mamba", "mamba2", "hymba", "samba"])
def test_compiled_blocks_match_eager_forward_and_backward(variant):
    """torch.compile of each block (the scan and conv kernels traced as custom ops, the chunked SSD
    and the rest compiled) is as close to the fp32 model as the eager model is, in logits and gradients under
    bf16 autocast (as training runs); decoding still uses the eager blocks.

    Compiled and eager bf16 differ from each other by bf16 rounding (fused kernels keep
    intermediates in fp32; measured 2.6% on Mamba-2's gradients), so each is compared with the
    fp32 eager model, and the compiled one may not be more than 1.5x further from it."""
    from ablate.model import LM
    from ablate.ops.backends import resolve
    from ablate.variants import load_variant
    from tests.conftest import tiny

    cfg = tiny(load_variant(variant).model, d_model=64)
    compiled_backends = resolve("auto", "cuda", compile="on")
    assert compiled_backends.compile
    fast, eager = LM(cfg, compiled_backends).cuda(), LM(cfg, resolve("auto", "cuda")).cuda()
    eager.load_state_dict(fast.state_dict())
    g = torch.Generator(device="cuda").manual_seed(0)
    tokens = torch.randint(0, cfg.size.vocab_size, (2, 70), device="cuda", generator=g)

    def logits_and_grads(model, bf16):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            logits = model(tokens).logits.float()
        grads = torch.autograd.grad(logits.square().mean(), list(model.parameters()))
        return logits, torch.cat([x.flatten() for x in grads])

    ref_logits, ref_grads = logits_and_grads(eager, bf16=False)
    fast_logits, fast_grads = logits_and_grads(fast, bf16=True)
    eager_logits, eager_grads = logits_and_grads(eager, bf16=True)
    for f, e, r in ((fast_logits, eager_logits, ref_logits), (fast_grads, eager_grads, ref_grads)):
        assert rel_err(e, r) < 5e-2  # bf16 autocast itself stays close to fp32
        assert rel_err(f, r) < 1.5 * rel_err(e, r) + 1e-3, (rel_err(f, r), rel_err(e, r))
    cache = fast.new_cache(5)
    with torch.no_grad():
        assert rel_err(fast(tokens[:, :5], cache).logits, eager(tokens[:, :5]).logits) < 1e-3


@pytest.mark.parametrize("variant", ["mamba", "samba"])
def test_a_compiled_block_is_one_graph(variant):
    """The Triton scan and conv are custom ops that dynamo traces: a Mamba block compiles to one graph
    (with torch.compiler.disable a Mamba block broke into 7 pieces, whose host-side cost left the
    GPU idle: benchmarks/NOTES.md)."""
    import torch._dynamo as dynamo

    from ablate.mixers.base import Context
    from ablate.model import LM
    from ablate.ops.backends import resolve
    from ablate.variants import load_variant
    from tests.conftest import tiny

    model = LM(tiny(load_variant(variant).model), resolve("auto", "cuda")).cuda()
    d = model.cfg.size.d_model
    for block in model.blocks:
        if not block.mixer.has_ssm:
            continue
        h = torch.randn(2, 40 + model.n_meta, d, device="cuda", requires_grad=True)
        ctx = Context(pos=torch.arange(h.shape[1], device="cuda"), n_meta=model.n_meta, cache=None,
                      shared_kv=None, want_map=False)
        explained = dynamo.explain(block)(h, ctx)
        assert explained.graph_break_count == 0, [str(r.reason) for r in explained.break_reasons]

