"""Keep freed CPU memory in the process (glibc malloc), so large tensors are not page-faulted in anew.

glibc serves an allocation above its mmap threshold (128 KiB, raised dynamically up to the
size of the largest block freed) with a fresh mmap and gives it back on free; its heap top is
trimmed back to the OS past the trim threshold. A CPU training step allocates and frees the
same few-MB activations every step, so each one comes back as fresh pages: thousands of page
faults per step, measured at a large part of a small model's step on the 2-core machine
(benchmarks/NOTES.md, "CPU path of the SSM variants"). Raising both thresholds keeps those
blocks in the heap for reuse; memory is then held at the step's peak, which a training run
reaches anyway. A no-op where the C library has no ``mallopt`` (not glibc).
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's maximum (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 1 << 30

_done = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if it took effect."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
