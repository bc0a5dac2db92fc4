"""Selective scan implementations against the step-by-step reference, forward and backward."""

from __future__ import annotations

import pytest
import torch

from ablate.ops import scan
from ablate.ops.scan import reference


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
