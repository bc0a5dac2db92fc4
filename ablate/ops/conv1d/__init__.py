"""Causal depthwise conv1d and its single-step update. ``causal_conv1d(..., impl=NAME)``
dispatches to one implementation; the name comes from ``ops.backends.resolve`` and is recorded."""

import importlib.util

from ablate.ops.conv1d import native, reference, shifts
from ablate.ops.conv1d.reference import causal_conv1d_loop, conv_step

# shifts: the pure-torch CPU path; native: compiled C++ (CPU, where it builds: ops.backends checks)
IMPLS = {"torch": reference.causal_conv1d, "shifts": shifts.causal_conv1d, "native": native.causal_conv1d}
if importlib.util.find_spec("triton") is not None:  # ops.backends decides whether it is used
    from ablate.ops.conv1d import triton as _triton_conv

    IMPLS["triton"] = _triton_conv.causal_conv1d


def causal_conv1d(*args, impl: str = "torch", **kwargs):
    return IMPLS[impl](*args, **kwargs)


__all__ = ["causal_conv1d", "causal_conv1d_loop", "conv_step", "IMPLS"]
