"""Causal depthwise conv1d and its single-step update. ``causal_conv1d(..., impl=NAME)``
dispatches to one implementation; the name comes from ``ops.backends.resolve`` and is recorded."""

import importlib.util

from ablate.ops import step as step_ops
from ablate.ops.conv1d import native, reference, shifts
from ablate.ops.conv1d.reference import causal_conv1d_loop

# shifts: the pure-torch CPU path; native: compiled C++ (CPU, where it builds: ops.backends checks)
IMPLS = {"torch": reference.causal_conv1d, "shifts": shifts.causal_conv1d, "native": native.causal_conv1d}
if importlib.util.find_spec("triton") is not None:  # ops.backends decides whether it is used
    from ablate.ops.conv1d import triton as _triton_conv

    IMPLS["triton"] = _triton_conv.causal_conv1d


def causal_conv1d(*args, impl: str = "torch", **kwargs):
    return IMPLS[impl](*args, **kwargs)


def conv_step(state, x, weight, bias=None, silu=True, impl: str = "triton"):
    """One decoding step (reference.conv_step): state (B, C, K-1) shifted in place; x (B, C) -> (B, C).
    impl "triton" (the mixers pass Backends.step): one Triton kernel where ops.step says it applies
    (CUDA), else (and with "torch") the reference."""
    kernels = step_ops.fused(state, x, weight, bias, impl=impl)
    if kernels is not None:
        return kernels.conv_step(state, x, weight, bias, silu)
    return reference.conv_step(state, x, weight, bias, silu)


__all__ = ["causal_conv1d", "causal_conv1d_loop", "conv_step", "IMPLS"]
