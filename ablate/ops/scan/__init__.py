"""Mamba-1 selective scan. ``selective_scan(..., impl=NAME)`` dispatches to one implementation;
the name comes from ``ops.backends.resolve`` and is recorded with the run."""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from ablate.layers import rms_norm
from ablate.ops import step as step_ops
from ablate.ops.scan import loop, native, reference

IMPLS = {
    "reference": reference.selective_scan,
    "loop": loop.selective_scan,
    "native": native.selective_scan,  # CPU only, compiled on first use (ops.backends checks it builds)
}
# why impl 'triton' is missing where Triton is installed (ops.backends decides whether it is used)
TRITON_MISSING = "triton is not installed"
if importlib.util.find_spec("triton") is not None:
    try:
        from ablate.ops.scan import triton as _triton_scan
    except (ImportError, AttributeError) as err:  # a Triton without the Gluon API the kernels use
        TRITON_MISSING = f"the Triton scan is written in Gluon (Triton 3.6); this Triton lacks it: {err}"
    else:
        IMPLS["triton"] = _triton_scan.selective_scan


def register_mamba_ssm() -> None:
    """Add mamba-ssm's CUDA kernel as impl 'cuda' (backend 'cuda'; checked by ops.backends)."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    @torch.compiler.disable  # a C++ extension: compiled blocks call it as it is
    def cuda(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, initial_state=None,
             return_final_state=False):
        if initial_state is not None:
            raise ValueError("mamba-ssm's selective_scan_fn takes no initial state; use backend 'triton'")
        # the CUDA kernel takes D and the dt bias in fp32 only
        D = D.float() if D is not None else None
        delta_bias = delta_bias.float() if delta_bias is not None else None
        return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_final_state)

    IMPLS["cuda"] = cuda


def selective_scan(*args, impl: str = "loop", **kwargs):
    return IMPLS[impl](*args, **kwargs)


def selective_state_update(h, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                           delta_softplus=True, impl: str = "triton"):
    """One decoding step. h: (B, D, N) updated in place; u, delta, z: (B, D); B, C: (B, N).
    impl "triton" (the mixers pass Backends.step): one Triton kernel where ops.step says it applies
    (CUDA), else (and with "torch") the reference below."""
    kernels = step_ops.fused(h, u, delta, A, B, C, D, z, delta_bias, impl=impl)
    if kernels is not None:
        return kernels.selective_state_update(h, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    y, h_new = reference.selective_scan(
        u[..., None], delta[..., None], A, B[..., None], C[..., None], D,
        None if z is None else z[..., None], delta_bias, delta_softplus,
        initial_state=h, return_final_state=True,
    )
    h.copy_(h_new)
    return y[..., 0]


def selective_step(h, u, z, dbc, A_log, D, dt_weight, dt_bias, norm_weights=None, eps: float = 1e-6,
                   impl: str = "triton"):
    """One decoding step of Hymba's Mamba-1 path from x_proj's output: dbc (B, R + 2N) is the low-rank
    dt | B | C before the inner RMSNorms (``norm_weights`` = their weights (dt, B, C), or None without
    them); dt = dt_weight (D, R) @ norm(dt_low), A = -exp(A_log), then ``selective_state_update``
    with dt_bias and softplus. h (B, D, N) in place; u, z (B, D) -> y (B, D). impl "triton": the
    norms, the dt projection and A run inside the state-update kernel where ops.step says it applies
    (on CUDA, 3 norms, a GEMV and an elementwise kernel fewer per layer and token), else this torch code."""
    kernels = step_ops.fused(h, u, z, dbc, A_log, D, dt_weight, dt_bias, *(norm_weights or ()), impl=impl)
    if kernels is not None:
        return kernels.selective_step(h, u, z, dbc, A_log, D, dt_weight, dt_bias, norm_weights, eps)
    A = -torch.exp(A_log.float())  # as MambaSSM.A
    R, N = dt_weight.shape[1], A.shape[1]
    dt, B, C = dbc.split([R, N, N], dim=-1)
    if norm_weights is not None:
        dt, B, C = (rms_norm(t, w, eps) for t, w in zip((dt, B, C), norm_weights, strict=True))
    return selective_state_update(h, u, F.linear(dt, dt_weight), A, B, C, D, z, dt_bias, True, impl="torch")
