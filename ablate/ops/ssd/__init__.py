"""Mamba-2 SSD. ``ssd(..., impl=NAME)`` dispatches; the name comes from ``ops.backends``.
impl 'triton' (``ssd/triton.py``, where Triton is installed) is a forward-only chunked kernel for
prefill and evaluation on CUDA: ``ops.backends`` picks it as ``ssd_prefill`` there, and the Mamba-2
path takes that one whenever no gradient is asked for."""

from __future__ import annotations

import importlib.util

from ablate.ops import step as step_ops
from ablate.ops.ssd import chunked, headmajor, native, reference

# native: the CPU path where its C++ builds, headmajor where not (ops.backends picks them without CUDA)
IMPLS = {"reference": reference.ssd, "chunked": chunked.ssd, "headmajor": headmajor.ssd,
         "native": native.ssd}  # CPU only, compiled on first use (ops.backends checks it builds)
if importlib.util.find_spec("triton") is not None:
    from ablate.ops.ssd import triton as _triton_ssd

    IMPLS["triton"] = _triton_ssd.ssd


def ssd(*args, impl: str = "chunked", **kwargs):
    return IMPLS[impl](*args, **kwargs)


def ssd_state_update(h, x, dt, A, B, C, D=None, impl: str = "triton"):
    """One decoding step. h: (B, H, P, N) updated in place; x: (B, H, P); dt: (B, H); B, C: (B, G, N).
    impl "triton" (the mixers pass Backends.step): one Triton kernel where ops.step says it applies
    (CUDA), else (and with "torch") the reference below."""
    kernels = step_ops.fused(h, x, dt, A, B, C, D, impl=impl)
    if kernels is not None:
        return kernels.ssd_state_update(h, x, dt, A, B, C, D)
    y, h_new = reference.ssd(x[:, None], dt[:, None], A, B[:, None], C[:, None], D,
                             initial_state=h, return_final_state=True)
    h.copy_(h_new)
    return y[:, 0]
