"""Mamba-2 SSD: chunked matmul form against the sequential reference, forward and backward."""

from __future__ import annotations

import pytest
import torch

from ablate.ops import ssd
from ablate.ops.ssd import reference


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
@pytest.mark.parametrize("impl", ["chunked", "headmajor"])
@pytest.mark.parametrize("with_h0", [True, False])
def test_chunked_matches_reference(T, chunk, G, impl, with_h0):
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
