"""Mamba-2 SSD: chunked matmul form against the sequential reference, forward and backward."""

from __future__ import annotations

import pytest
import torch

from ablate.ops import ssd
from ablate.ops.ssd import native, reference

needs_native = pytest.mark.skipif(not native.available(), reason="the native SSD does not build here (no C++ compiler)")


def inputs(B, T, H, P, G, N, requires_grad=True):
    f = dict(dtype=torch.float64, requires_grad=requires_grad)
    return dict(
        x=torch.randn(B, T, H, P, **f),
        dt=torch.nn.functional.softplus(torch.randn(B, T, H, dtype=torch.float64))
        .requires_grad_(requires_grad),
        A=(-torch.rand(H, dtype=torch.float64) * 3 - 0.1).requires_grad_(requires_grad),
        B=torch.randn(B, T, G, N, **f),
        C=torch.randn(B, T, G, N, **f),
        D=torch.randn(H, **f),
    )


@pytest.mark.parametrize("T,chunk", [(1, 4), (13, 4), (37, 16), (64, 16)])
@pytest.mark.parametrize("G", [1, 2])
@pytest.mark.parametrize("impl", ["chunked", "headmajor", "native"])
@pytest.mark.parametrize("with_h0", [True, False])
def test_chunked_matches_reference(T, chunk, G, impl, with_h0):
    if impl == "native" and not native.available():
        pytest.skip("the native SSD does not build here (no C++ compiler)")
    x = inputs(2, T, 4, 3, G, 5)
    h0 = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True) if with_h0 else None
    y_ref, h_ref = reference.ssd(**x, initial_state=h0, return_final_state=True)
    grad, grad_h = torch.randn_like(y_ref), torch.randn_like(h_ref)
    leaves = list(x.values()) + ([h0] if with_h0 else [])
    g_ref = torch.autograd.grad((y_ref * grad).sum() + (h_ref * grad_h).sum(), leaves)
    y, h = ssd.IMPLS[impl](**x, initial_state=h0, return_final_state=True, chunk=chunk)
    g = torch.autograd.grad((y * grad).sum() + (h * grad_h).sum(), leaves)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref.to(h.dtype), rtol=1e-5, atol=1e-5)
    for name, a, b in zip(list(x) + ["h0"] * with_h0, g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"grad {name}")


def test_reference_single_head_is_the_recurrence():
    x = inputs(1, 6, 1, 1, 1, 2, requires_grad=False)
    h = torch.zeros(2, dtype=torch.float64)
    ys = []
    for t in range(6):
        dt = x["dt"][0, t, 0]
        h = torch.exp(dt * x["A"][0]) * h + dt * x["x"][0, t, 0, 0] * x["B"][0, t, 0]
        ys.append((h * x["C"][0, t, 0]).sum() + x["D"][0] * x["x"][0, t, 0, 0])
    torch.testing.assert_close(reference.ssd(**x)[0, :, 0, 0], torch.stack(ys))


def test_state_update_equals_one_step():
    x = inputs(2, 1, 4, 3, 2, 5, requires_grad=False)
    h0 = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    y_ref, h_ref = reference.ssd(**x, initial_state=h0, return_final_state=True)
    h = h0.clone()
    y = ssd.ssd_state_update(h, x["x"][:, 0], x["dt"][:, 0], x["A"], x["B"][:, 0], x["C"][:, 0], x["D"])
    torch.testing.assert_close(y, y_ref[:, 0])
    torch.testing.assert_close(h, h_ref)


def test_headmajor_gradcheck():
    x = inputs(1, 6, 2, 2, 1, 3)
    h0 = torch.randn(1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    names = [*x, "initial_state"]
    assert torch.autograd.gradcheck(
        lambda *a: ssd.IMPLS["headmajor"](**dict(zip(names, a, strict=True)), return_final_state=True, chunk=4),
        (*x.values(), h0))


# ----------------------------------------------------------------------------- the native CPU kernel


def projected(b, T, H, P, G, N, dtype, with_D=True):
    """x, B, C as views of one token-major (b, T, H P + 2 G N) projection, as the Mamba-2 path passes
    them (rows strided by the projection's width), and the leaves to differentiate."""
    proj = torch.randn(b, T, H * P + 2 * G * N, dtype=dtype, requires_grad=True)
    x, B, C = proj.split([H * P, G * N, G * N], -1)
    dt = torch.nn.functional.softplus(torch.randn(b, T, H, dtype=dtype)).requires_grad_()
    A = (-torch.rand(H, dtype=dtype) * 3 - 0.1).requires_grad_()
    D = torch.randn(H, dtype=dtype, requires_grad=True) if with_D else None
    args = dict(x=x.unflatten(-1, (H, P)), dt=dt, A=A, B=B.unflatten(-1, (G, N)), C=C.unflatten(-1, (G, N)), D=D)
    return args, [t for t in (proj, dt, A, D) if t is not None]


@needs_native
@pytest.mark.parametrize("T", [1, 7, 16, 17, 40])
@pytest.mark.parametrize("block", [1, 4, 16])  # steps per recomputed block: 1, several and one block
@pytest.mark.parametrize("H,P,G", [(4, 3, 2), (2, 40, 1), (4, 40, 2), (4, 32, 1)])  # whole and partial tiles
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_D", [True, False])
def test_native_forward_backward_against_reference(monkeypatch, T, block, H, P, G, dtype, with_D):
    """Output, final state and the gradients of x, dt, A, B, C, D and the initial state, at odd lengths
    that end mid-block, with several B/C groups and channel counts that leave part of a register tile."""
    monkeypatch.setattr(native, "CHUNK", block)
    args, leaves = projected(2, T, H, P, G, 5, dtype, with_D)
    h0 = torch.randn(2, H, P, 5, dtype=dtype, requires_grad=True)
    outs = [ssd.IMPLS[impl](**args, initial_state=h0, return_final_state=True) for impl in ("native", "reference")]
    gy, gh = torch.randn_like(outs[1][0]), torch.randn_like(outs[1][1])
    grads = [torch.autograd.grad((y * gy).sum() + (h * gh).sum(), leaves + [h0]) for y, h in outs]
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    torch.testing.assert_close(outs[0][0], outs[1][0], **tol)
    torch.testing.assert_close(outs[0][1], outs[1][1], **tol)
    for name, a, b in zip(["proj", "dt", "A"] + ["D"] * with_D + ["h0"], *grads, strict=True):
        torch.testing.assert_close(a, b, **tol, msg=f"grad {name}")


@needs_native
def test_native_without_initial_state_or_final_state_gradient():
    args, leaves = projected(3, 21, 4, 8, 2, 6, torch.float64)
    y_ref = reference.ssd(**args)
    y = ssd.IMPLS["native"](**args)
    gy = torch.randn_like(y)
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(torch.autograd.grad((y * gy).sum(), leaves), torch.autograd.grad((y_ref * gy).sum(), leaves),
                    strict=True):
        torch.testing.assert_close(a, b)
    # only the final state used (D does not reach it): the output's gradient is None in the backward
    _, h = ssd.IMPLS["native"](**args, return_final_state=True)
    _, h_ref = reference.ssd(**args, return_final_state=True)
    proj_dt_A = leaves[:3]
    for a, b in zip(torch.autograd.grad(h.sum(), proj_dt_A), torch.autograd.grad(h_ref.sum(), proj_dt_A), strict=True):
        torch.testing.assert_close(a, b)


@needs_native
def test_native_gradcheck():
    args, _ = projected(1, 6, 2, 3, 1, 3, torch.float64)
    args = {k: v.detach().requires_grad_() for k, v in args.items()}
    h0 = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    names = [*args, "initial_state"]
    assert torch.autograd.gradcheck(
        lambda *a: ssd.IMPLS["native"](**dict(zip(names, a, strict=True)), return_final_state=True),
        (*args.values(), h0))


@needs_native
def test_native_propagates_nan():
    args, _ = projected(2, 9, 2, 4, 1, 3, torch.float32)
    x = args["x"].detach().clone()
    x[0, 3, 1, 2] = float("nan")
    y = ssd.IMPLS["native"](**{**args, "x": x})
    # the NaN enters the state of its channel (head 1, p = 2) at step 3, and every later output of that
    # channel reads it; the other channels and samples stay finite
    nan = torch.zeros_like(y, dtype=torch.bool)
    nan[0, 3:, 1, 2] = True
    assert torch.equal(y.isnan(), nan)
