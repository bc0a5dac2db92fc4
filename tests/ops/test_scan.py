"""Selective scan implementations against the step-by-step reference, forward and backward."""

from __future__ import annotations

import pytest
import torch

from ablate.ops import scan
from ablate.ops.scan import native, reference


def inputs(B, D, T, N, dtype=torch.float64, requires_grad=True):
    g = dict(dtype=dtype, requires_grad=requires_grad)
    return dict(
        u=torch.randn(B, D, T, **g),
        delta=(0.5 * torch.randn(B, D, T)).to(dtype).requires_grad_(requires_grad),
        A=(-torch.rand(D, N) * 2 - 0.1).to(dtype).requires_grad_(requires_grad),
        B=torch.randn(B, N, T, **g),
        C=torch.randn(B, N, T, **g),
        D=torch.randn(D, **g),
        z=torch.randn(B, D, T, **g),
        delta_bias=(0.1 * torch.randn(D)).to(dtype).requires_grad_(requires_grad),
    )


def naive(u, delta, A, B, C, D, z, delta_bias):
    """The recurrence, one scalar channel/state at a time (float64), independent of the ops."""
    dt = torch.nn.functional.softplus(delta + delta_bias[None, :, None])
    Bsz, Dch, T = u.shape
    y = torch.zeros_like(u)
    for b in range(Bsz):
        for d in range(Dch):
            h = torch.zeros(A.shape[1], dtype=u.dtype)
            for t in range(T):
                h = torch.exp(dt[b, d, t] * A[d]) * h + dt[b, d, t] * B[b, :, t] * u[b, d, t]
                y[b, d, t] = (h * C[b, :, t]).sum() + D[d] * u[b, d, t]
    return y * torch.nn.functional.silu(z)


def test_reference_matches_the_recurrence_written_out():
    x = inputs(2, 3, 7, 4, requires_grad=False)
    torch.testing.assert_close(reference.selective_scan(**x), naive(**x))


@pytest.mark.parametrize("T", [1, 15, 33, 64])
@pytest.mark.parametrize("impl", sorted(set(scan.IMPLS) - {"reference", "triton", "cuda"}))
def test_impl_matches_reference_forward_backward(impl, T):
    if impl == "native" and not native.available():
        pytest.skip("the native scan does not build here (no C++ compiler)")
    x = inputs(2, 5, T, 6)
    y_ref, h_ref = reference.selective_scan(**x, return_final_state=True)
    grad = torch.randn_like(y_ref)
    g_ref = torch.autograd.grad((y_ref * grad).sum() + h_ref.sum(), list(x.values()))
    y, h = scan.selective_scan(**x, return_final_state=True, impl=impl)
    g = torch.autograd.grad((y * grad).sum() + h.sum(), list(x.values()))
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref.to(h.dtype), rtol=1e-5, atol=1e-5)
    for name, a, b in zip(x, g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"grad {name}")


def test_initial_state_splits_a_sequence():
    x = inputs(2, 4, 20, 3, requires_grad=False)
    full = reference.selective_scan(**x)
    cut = 9
    first = {k: (v[..., :cut] if v.dim() == 3 else v) for k, v in x.items()}
    rest = {k: (v[..., cut:] if v.dim() == 3 else v) for k, v in x.items()}
    y1, h = scan.selective_scan(**first, return_final_state=True)
    y2 = scan.selective_scan(**rest, initial_state=h)
    torch.testing.assert_close(torch.cat([y1, y2], -1), full)


def test_state_update_equals_one_scan_step():
    x = inputs(2, 4, 1, 3, requires_grad=False)
    h0 = torch.randn(2, 4, 3, dtype=torch.float64)
    y_ref, h_ref = reference.selective_scan(**x, initial_state=h0, return_final_state=True)
    h = h0.clone()
    y = scan.selective_state_update(h, *(x[k][..., 0] if x[k].dim() == 3 else x[k]
                                         for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")))
    torch.testing.assert_close(y, y_ref[..., 0])
    torch.testing.assert_close(h, h_ref)


# ----------------------------------------------------------------------------- the CPU loop, block by block


def _grads_match(x, kwargs, impl_kwargs=None, keys=None):
    keys = keys or [k for k, v in x.items() if v is not None and v.requires_grad]
    y_ref, h_ref = reference.selective_scan(**x, **kwargs, return_final_state=True)
    gy, gh = torch.randn_like(y_ref), torch.randn_like(h_ref)
    g_ref = torch.autograd.grad((y_ref * gy).sum() + (h_ref * gh).sum(), [x[k] for k in keys])
    y, h = scan.selective_scan(**x, **kwargs, return_final_state=True, impl="loop")
    g = torch.autograd.grad((y * gy).sum() + (h * gh).sum(), [x[k] for k in keys])
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(h, h_ref)
    for name, a, b in zip(keys, g, g_ref, strict=True):
        torch.testing.assert_close(a, b, msg=f"grad {name}")


@pytest.mark.parametrize("T", [1, 7, 16, 17])
@pytest.mark.parametrize("block_bytes", [1, 2 * 5 * 6 * 8 * 3, 1 << 20])  # 1 step, 3 steps, all steps per block
def test_loop_blocks_with_initial_and_final_state(monkeypatch, T, block_bytes):
    from ablate.ops.scan import loop

    monkeypatch.setattr(loop, "BLOCK_BYTES", block_bytes)
    x = inputs(2, 5, T, 6)
    h0 = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    _grads_match({**x, "initial_state": h0}, {})


@pytest.mark.parametrize("drop", [("D",), ("z",), ("delta_bias",), ("D", "z", "delta_bias")])
@pytest.mark.parametrize("softplus", [True, False])
def test_loop_without_optional_inputs(monkeypatch, drop, softplus):
    from ablate.ops.scan import loop

    monkeypatch.setattr(loop, "BLOCK_BYTES", 2 * 3 * 4 * 8 * 4)  # 4 steps per block
    x = inputs(2, 3, 11, 4)
    if not softplus:  # a positive dt without the softplus
        x["delta"] = (torch.rand(2, 3, 11, dtype=torch.float64) * 0.5 + 0.05).requires_grad_()
    _grads_match({**x, **{k: None for k in drop}}, {"delta_softplus": softplus})


def test_loop_takes_token_major_views_and_float32():
    # the Mamba path passes transposed views of (b, T, channels) projections; fp32 as in training
    g = torch.Generator().manual_seed(0)
    b, D, T, N = 3, 8, 21, 4
    proj = torch.randn(b, T, 3 * D + 2 * N, generator=g, requires_grad=True)
    u, delta, z, B, C = (t.transpose(1, 2) for t in proj.split([D, D, D, N, N], -1))
    A = -torch.rand(D, N, generator=g) - 0.1
    args = (u, delta, A, B, C, torch.randn(D, generator=g), z, 0.1 * torch.randn(D, generator=g))
    gy = torch.randn(b, D, T, generator=g)
    y_ref = reference.selective_scan(*args)
    (g_ref,) = torch.autograd.grad((y_ref * gy).sum(), proj)
    y = scan.selective_scan(*args, impl="loop")
    (g_loop,) = torch.autograd.grad((y * gy).sum(), proj)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_loop, g_ref, rtol=1e-4, atol=1e-4)


def test_loop_gradcheck(monkeypatch):
    from ablate.ops.scan import loop

    monkeypatch.setattr(loop, "BLOCK_BYTES", 2 * 3 * 2 * 8 * 2)  # 2 steps per block
    x = inputs(2, 3, 5, 2)
    h0 = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    names = [*x, "initial_state"]

    def f(*args):
        return loop.selective_scan(**dict(zip(names, args, strict=True)), return_final_state=True)

    assert torch.autograd.gradcheck(f, (*x.values(), h0))


@pytest.mark.parametrize("T", [1, 15, 16, 17, 40])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("drop", [(), ("D",), ("z",), ("delta_bias",), ("D", "z", "delta_bias")])
def test_native_with_initial_and_final_state(T, dtype, drop):
    """Blocks of CHUNK steps (odd lengths end mid-block), an initial state and the final state's
    gradient, optional inputs dropped, float32 and float64; token-major views as the path passes them."""
    if not native.available():
        pytest.skip("the native scan does not build here (no C++ compiler)")
    x = inputs(3, 9, T, 5, dtype=dtype)
    for name in drop:
        x[name] = None
    # u and z as views of one token-major (b, T, 2 D) projection, as the Mamba path passes them
    uz = torch.randn(3, T, 18, dtype=dtype, requires_grad=True)
    x["u"] = uz[..., :9].transpose(1, 2)
    if "z" not in drop:
        x["z"] = uz[..., 9:].transpose(1, 2)
    h0 = torch.randn(3, 9, 5, dtype=dtype, requires_grad=True)
    wrt = [uz, h0] + [v for k, v in x.items() if v is not None and k not in ("u", "z")]
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    outs = [scan.selective_scan(**x, initial_state=h0, return_final_state=True, impl=impl)
            for impl in ("native", "reference")]
    gy = torch.randn_like(outs[0][0])
    gh = torch.randn_like(outs[0][1])
    grads = [torch.autograd.grad((y * gy).sum() + (h * gh).sum(), wrt) for y, h in outs]
    torch.testing.assert_close(outs[0][0], outs[1][0], **tol)
    torch.testing.assert_close(outs[0][1], outs[1][1], **tol)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_native_propagates_nan():
    if not native.available():
        pytest.skip("the native scan does not build here (no C++ compiler)")
    x = inputs(2, 3, 6, 4)
    x["u"] = x["u"].detach().clone()
    x["u"][0, 1, 2] = float("nan")
    y = scan.selective_scan(**x, impl="native")
    assert y[0, 1, 2:].isnan().all() and not y[1].isnan().any()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_softplus_over_its_whole_range(dtype):
    """dt = softplus(delta + bias) is computed inside the native scan: from far below 0 (softplus ~
    exp, where 1 + exp rounds to 1) to above torch's threshold of 20, value and gradient as torch's."""
    if not native.available():
        pytest.skip("the native scan does not build here (no C++ compiler)")
    x = inputs(2, 8, 9, 3, dtype=dtype)
    x["delta"] = torch.linspace(-40, 30, 2 * 8 * 9, dtype=dtype).reshape(2, 8, 9).requires_grad_()
    x["A"] = (-torch.rand(8, 3) * 0.05 - 0.01).to(dtype).requires_grad_()  # keep exp(dt A) away from 0
    outs = [scan.selective_scan(**x, impl=impl) for impl in ("native", "reference")]
    g = torch.randn_like(outs[0])
    grads = [torch.autograd.grad((y * g).sum(), [x["delta"], x["delta_bias"], x["u"]]) for y in outs]
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    torch.testing.assert_close(outs[0], outs[1], **tol)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_custom_ops_trace_on_meta_tensors():
    """The scan and conv custom ops' fake implementations and autograd formula, without a GPU:
    forward and backward on meta tensors give every gradient its input's shape and dtype, and
    dynamo compiles the conv -> scan pair as one graph (fullgraph=True fails on any break)."""
    pytest.importorskip("triton")
    from ablate.ops.conv1d import triton as tconv
    from ablate.ops.scan import triton as tscan

    def meta(*shape, dtype=torch.bfloat16):
        return torch.empty(*shape, dtype=dtype, device="meta").requires_grad_()

    b, d, T, N = 2, 64, 256, 16
    x = meta(b, T, d)  # token-major, as the mixers hand it over
    inputs = dict(delta=meta(b, d, T), A=meta(d, N, dtype=torch.float32), B=meta(b, N, T), C=meta(b, N, T),
                  D=meta(d, dtype=torch.float32), z=meta(b, d, T), delta_bias=meta(d, dtype=torch.float32))
    w, bias = meta(d, 4), meta(d)

    def loss(x, w, bias, **kw):
        u = tconv.causal_conv1d(x.transpose(1, 2), w, bias)
        y, h = tscan.selective_scan(u, **kw, return_final_state=True)
        return y.float().sum() + h.sum()

    leaves = [x, w, bias, *inputs.values()]
    for fn in (loss, torch.compile(loss, backend="aot_eager", fullgraph=True)):
        grads = torch.autograd.grad(fn(x, w, bias, **inputs), leaves)
        for leaf, grad in zip(leaves, grads, strict=True):
            assert grad.shape == leaf.shape and grad.dtype == leaf.dtype
