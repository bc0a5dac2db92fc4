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


def test_a_mamba2_model_prefills_through_the_kernel_and_trains_through_chunked(kernel):
    """ops.backends picks the kernel for the SSD without a gradient: a Mamba-2 model's no-grad
    forward with a carried state (prefill in two pieces) matches the chunked path's, and a training
    forward still differentiates (the kernel has no backward)."""
    import dataclasses

    from ablate.model import LM
    from ablate.ops.backends import Backends, resolve
    from ablate.variants import load_variant

    cfg = load_variant("mamba2").model
    cfg = dataclasses.replace(cfg, size=dataclasses.replace(cfg.size, d_model=128, n_layers=2, vocab_size=256))
    if DEVICE == "cuda":
        backends = resolve("auto", DEVICE)
        assert backends.ssd_prefill == "triton" and backends.ssd == "chunked"
    else:  # the interpreter: the same wiring, in fp32
        backends = Backends(ssd_prefill="triton")
    torch.manual_seed(0)
    fast = LM(cfg, backends).to(DEVICE)
    slow = LM(cfg, dataclasses.replace(backends, ssd_prefill="chunked")).to(DEVICE)
    slow.load_state_dict(fast.state_dict())
    tokens = torch.randint(0, 256, (2, 301), device=DEVICE)
    with torch.no_grad():
        outs = []
        for model in (fast, slow):
            cache = model.new_cache(301)
            first = model(tokens[:, :173], cache=cache).logits
            outs.append(torch.cat([first, model(tokens[:, 173:], cache=cache).logits], 1))
    assert rel_err(outs[0], outs[1]) < 1e-4
    fast(tokens).logits.float().square().mean().backward()
    assert all(p.grad is not None for p in fast.parameters() if p.requires_grad)
