"""Resolve the kernel implementation of every op once per run.

The resolved names go into the run record because a different kernel changes speed and
numerics. An explicitly requested backend that is not available is an error with an install
hint, never a silent fallback; no op decides by try/except inside a forward.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Backends:
    scan: str = "loop"
    ssd: str = "chunked"
    # the SSD where no gradient is needed (prefill, evaluation): 'triton' on CUDA, a forward-only
    # kernel 1.4x (B=1, T=8192) to 3.0x (B=8, T=2048) as fast as the compiled chunked path (H200,
    # 2026-12-04, benchmarks/NOTES.md "Mamba-2 prefill"); else the same as ``ssd``
    ssd_prefill: str = "chunked"
    attention: str = "sdpa"
    conv1d: str = "torch"
    rope: str = "torch"  # the attention path's RoPE: 'torch' (autograd) or 'rotation' (hand-written backward, CPU)
    gated_norm: str = "torch"  # Mamba-2's RMSNorm(y SiLU(z)): 'torch' (autograd) or 'native' (compiled C++, CPU)
    step: str = "torch"  # one decoding step of the SSM layers: 'triton' (ops/step's fused kernels) or 'torch'
    compile: bool = False  # torch.compile each block for full-sequence forwards (training, prefill)

    def as_dict(self) -> dict:
        return asdict(self)


class BackendError(RuntimeError):
    pass


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def available() -> dict[str, bool]:
    cuda = torch.cuda.is_available()
    return {
        "cuda": cuda,
        "triton": cuda and _has("triton"),
        "mamba_ssm": cuda and _has("mamba_ssm"),
        "causal_conv1d": cuda and _has("causal_conv1d"),
    }


def resolve(requested: str = "auto", device: str | torch.device = "cpu", compile: str = "off") -> Backends:
    """'torch': pure-torch everywhere. 'auto': the fastest implementation available on device
    (on the CPU: the native scan, SSD, conv and gated norm where the C++ compiler builds them).
    'triton' / 'cuda': our Triton kernels / mamba-ssm's CUDA kernels, or an error.
    compile: 'on' | 'off' | 'auto' (on with a CUDA device: measured faster, benchmarks/RESULTS.md)."""
    on_cuda = torch.device(device).type == "cuda"
    if compile not in ("auto", "on", "off"):
        raise BackendError(f"compile must be one of auto, on, off; got '{compile}'")
    compiled = compile == "on" or (compile == "auto" and on_cuda)
    have = available()
    if requested in ("triton", "cuda") and not on_cuda:
        raise BackendError(f"backend '{requested}' needs a CUDA device; got device '{device}'")
    if requested == "cuda" and not have["mamba_ssm"]:
        raise BackendError("backend 'cuda' needs mamba-ssm: pip install 'ablate[cuda]'")
    if requested == "triton" and not have["triton"]:
        raise BackendError("backend 'triton' needs triton: pip install triton")
    if not on_cuda:  # the CPU paths: the scan, the SSD and the conv compiled from C++ where a compiler
        # builds them ('auto'; ops/native_build.py), else the torch loop, the head-major SSD and shifts;
        # Mamba-2's gated norm likewise (else autograd); RoPE with its hand-written backward ('auto':
        # fewer passes over memory, benchmarks/NOTES.md)
        from ablate.ops.conv1d import native as native_conv
        from ablate.ops.gated_norm import native as native_norm
        from ablate.ops.scan import native as native_scan
        from ablate.ops.ssd import native as native_ssd

        auto = requested == "auto"
        scan = "native" if auto and native_scan.available() else "loop"
        ssd = "native" if auto and native_ssd.available() else "headmajor"
        conv = "native" if auto and native_conv.available() else "shifts"
        norm = "native" if auto and native_norm.available() else "torch"
        rope = "rotation" if auto else "torch"
        return Backends(scan=scan, ssd=ssd, ssd_prefill=ssd, conv1d=conv, rope=rope, gated_norm=norm,
                        compile=compiled)
    if requested == "torch":
        return Backends(compile=compiled)
    from ablate.ops import scan as scan_ops

    if requested == "triton" and "triton" not in scan_ops.IMPLS:
        raise BackendError(f"backend 'triton': {scan_ops.TRITON_MISSING}")

    if requested == "cuda":
        scan = "cuda"
        scan_ops.register_mamba_ssm()
    elif have["triton"] and "triton" in scan_ops.IMPLS:
        scan = "triton"
    else:
        scan = "loop"
    from ablate.ops import ssd as ssd_ops

    return Backends(scan=scan, ssd_prefill="triton" if "triton" in ssd_ops.IMPLS else "chunked",
                    attention="flex" if have["triton"] else "sdpa",
                    conv1d="triton" if have["triton"] else "torch", step="triton" if have["triton"] else "torch",
                    compile=compiled)
