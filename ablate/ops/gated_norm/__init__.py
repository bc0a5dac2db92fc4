"""Mamba-2's gated RMSNorm, RMSNorm(y SiLU(z)). ``gated_rms_norm(..., impl=NAME)`` dispatches; the name
comes from ``ops.backends.resolve`` and is recorded."""

from ablate.ops.gated_norm import native, reference

# torch: autograd through the formula (every device); native: compiled C++ with a hand-written
# backward (the CPU, where it builds)
IMPLS = {"torch": reference.gated_rms_norm, "native": native.gated_rms_norm}


def gated_rms_norm(y, z, weight, eps: float, impl: str = "torch"):
    return IMPLS[impl](y, z, weight, eps)


__all__ = ["gated_rms_norm", "IMPLS"]
