"""The forward-only chunked SSD kernels (ops/ssd/triton.py) against the float64 reference.

GPU tests (marked gpu). Without a GPU they run on the CPU through Triton's interpreter:

    TRITON_INTERPRET=1 PYTHONPATH=/tmp/tri python -m pytest tests/ops/test_ssd_triton.py
"""

from __future__ import annotations

import pytest
import torch

from ablate.ops.ssd import reference
from tests.ops.triton_cases import DEVICE, MARKS, rel_err

pytestmark = MARKS


@pytest.fixture(scope="module")
def kernel():
    pytest.importorskip("triton")
    from ablate.ops.ssd import triton as kernel

    return kernel


def inputs(B, T, H, P, G, N, dtype, with_D=True):
    return dict(
        x=torch.randn(B, T, H, P, device=DEVICE).to(dtype),
        dt=(0.05 + 0.5 * torch.rand(B, T, H, device=DEVICE)).to(dtype),
        A=-(0.5 + 4 * torch.rand(H, device=DEVICE)),
        B=torch.randn(B, T, G, N, device=DEVICE).to(dtype),
        C=torch.randn(B, T, G, N, device=DEVICE).to(dtype),
        D=torch.randn(H, device=DEVICE) if with_D else None,
    )


def f64(x):
    return {k: None if v is None else v.double().cpu() for k, v in x.items()}


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B,T,H,P,G,N", [(1, 1, 1, 16, 1, 16), (2, 70, 4, 8, 2, 5), (1, 130, 2, 32, 1, 64),
                                         (2, 64, 3, 80, 3, 16)])
def test_ssd_kernel_matches_reference(kernel, dtype, tol, B, T, H, P, G, N):
    """Odd lengths (1, 70, 130: a partial last chunk), P and N below the dot's 16 and P above one
    tile (80 > 64), grouped B/C; with an initial state, returning the final one."""
    x = inputs(B, T, H, P, G, N, dtype)
    h0 = torch.randn(B, H, P, N, device=DEVICE)
    y_ref, h_ref = reference.ssd(**f64(x), initial_state=h0.double().cpu(), return_final_state=True)
    y, h = kernel.ssd(**x, initial_state=h0, return_final_state=True)
    assert y.dtype == dtype and y.shape == (B, T, H, P) and h.dtype == torch.float32
    assert rel_err(y, y_ref) < tol and rel_err(h, h_ref) < tol


def test_ssd_kernel_without_state_or_D(kernel):
    x = inputs(2, 67, 2, 16, 1, 16, torch.float32, with_D=False)
    y_ref = reference.ssd(**f64(x))
    assert rel_err(kernel.ssd(**x), y_ref) < 1e-5


def test_ssd_kernel_refuses_a_gradient(kernel):
    x = inputs(1, 8, 1, 16, 1, 16, torch.float32)
    x["x"].requires_grad_()
    with pytest.raises(RuntimeError, match="forward-only"):
        kernel.ssd(**x)
