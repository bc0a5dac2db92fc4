"""Fused decoding-step kernels: which one-token update runs.

``selective_state_update`` and ``selective_step`` (Mamba-1; the latter with the inner norms, dt_proj
and A = -exp(A_log) folded in), ``ssd_state_update`` (Mamba-2) and ``conv_step`` keep their
torch code as the reference and ask ``fused`` whether the Triton kernels of ``step/triton.py`` apply
instead: Triton importable, every tensor on CUDA in fp32 / bf16 / fp16, and no gradient wanted
(the kernels have no backward). Everything else, the CPU above all, runs the torch code unchanged.
The mixers pass ``Backends.step`` (``ops.backends.resolve``: 'triton' on CUDA with Triton unless the
backend 'torch' was asked for, else 'torch'); benchmarks/bench.py records it with each decoding row.
"""

from __future__ import annotations

import importlib.util

import torch

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

if importlib.util.find_spec("triton") is not None:
    from ablate.ops.step import triton as kernels
else:
    kernels = None


def fused(*tensors, impl: str = "triton"):
    """The Triton step kernels module where they apply to these tensors (None entries skipped) and
    ``impl`` asks for them, else None (the caller runs its torch reference)."""
    if impl not in ("triton", "torch"):
        raise ValueError(f"step impl '{impl}'; allowed: triton, torch")
    if kernels is None or impl == "torch":
        return None
    given = [t for t in tensors if t is not None]
    if not all(t.is_cuda and t.dtype in KERNEL_DTYPES for t in given):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in given):
        return None
    return kernels

